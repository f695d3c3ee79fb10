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
  if (!input || !values) return;

  function hex(buffer) {
    return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function hashAll(files) {
    const list = Array.from(files).filter((f) => f.size > 0);
    const digests = [];
    for (let i = 0; i < list.length; i++) {
      status.textContent = `hashing ${i + 1} of ${list.length}…`;
      digests.push(hex(await crypto.subtle.digest("SHA-256", await list[i].arrayBuffer())));
    }
    const known = new Set(values.value.split(/[\s,]+/).filter(Boolean));
    const added = digests.filter((d) => !known.has(d));
    if (added.length) {
      values.value = (values.value.trim() ? values.value.trim() + "\n" : "") + added.join("\n");
    }
    if (field) field.value = "sha256";
    status.textContent = `${list.length} file(s) hashed here; ${added.length} new SHA-256 value(s) added. No image was sent.`;
    input.value = "";
  }

  input.addEventListener("change", () => hashAll(input.files));
  if (zone) {
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer) hashAll(e.dataTransfer.files);
    });
  }
})();
