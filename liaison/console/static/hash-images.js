// Hash image files in the browser (SHA-256, Web Crypto) and add only the hex
// digests to the query's values. The file input has no name and sits outside
// the form, so the files themselves are never submitted.
"use strict";
(function () {
  const input = document.getElementById("images");
  const zone = document.getElementById("dropzone");
  const values = document.getElementById("values");
  const field = document.getElementById("field");
  const status = document.getElementById("hash-status");
  if (!input || !values || !status) return;
  const IMAGE = /\.(jpe?g|png|gif|bmp|webp|tiff?|heic|heif|avif)$/i;

  function hex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function isImage(file) {
    return file.size > 0 && (file.type.startsWith("image/") || IMAGE.test(file.name));
  }

  async function hashAll(files) {
    const list = files.filter(isImage);
    const skipped = files.length - list.length;
    const digests = [];
    for (let i = 0; i < list.length; i++) {
      status.textContent = `hashing ${i + 1} of ${list.length}…`;
      digests.push(hex(await crypto.subtle.digest("SHA-256", await list[i].arrayBuffer())));
    }
    const known = new Set(values.value.split(/[\s,]+/).filter(Boolean));
    const added = [...new Set(digests)].filter((d) => !known.has(d));
    if (added.length) {
      values.value = (values.value.trim() ? values.value.trim() + "\n" : "") + added.join("\n");
    }
    if (field && list.length) field.value = "sha256";
    status.textContent =
      `${list.length} file(s) hashed here; ${added.length} new SHA-256 value(s) added` +
      (skipped ? `; ${skipped} file(s) that are not images skipped` : "") +
      ". No image was sent.";
    input.value = "";
  }

  // A dropped folder arrives as an entry to walk; its files are read here only.
  async function dropped(items) {
    const entries = Array.from(items)
      .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
      .filter(Boolean);
    const files = [];
    async function walk(entry) {
      if (entry.isFile) {
        files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        let batch;
        do {
          batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
          for (const child of batch) await walk(child);
        } while (batch.length);
      }
    }
    for (const entry of entries) await walk(entry);
    return files;
  }

  input.addEventListener("change", () => hashAll(Array.from(input.files)));
  if (zone) {
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", async (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (!e.dataTransfer) return;
      const files = e.dataTransfer.items
        ? await dropped(e.dataTransfer.items)
        : Array.from(e.dataTransfer.files);
      await hashAll(files);
    });
  }
})();
