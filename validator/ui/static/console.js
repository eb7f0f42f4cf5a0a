// foblab console: the project's own few lines of script. Pages work without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // A chosen seed file is read into the form's text field (the form posts text, not a file).
  for (const input of document.querySelectorAll("input[type=file][data-into]")) {
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      const target = document.getElementById(input.dataset.into);
      if (!file || !target) return;
      file.text().then((text) => { target.value = text; });
    });
  }
  // Forms that ask first.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Live parts (a station's INFO): reloaded every few seconds while the page is visible.
  for (const box of document.querySelectorAll("[data-src]")) {
    setInterval(() => {
      if (document.hidden) return;
      fetch(box.dataset.src, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.text() : null))
        .then((html) => {
          if (html === null) return;
          const doc = new DOMParser().parseFromString(html, "text/html");
          box.replaceChildren(...doc.body.childNodes);
        })
        .catch(() => {});
    }, 3000);
  }
});
