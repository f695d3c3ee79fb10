"""Hashing on the investigator's machine: SHA-256, MD5 and PDQ of files, and PDQ bit work.

``pdq`` (hex and 64-bit words, distances) is light and shared with nodes;
``files`` needs numpy, Pillow and pdqhash and is imported only when hashing.
"""
