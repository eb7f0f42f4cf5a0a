// foblab token panel: live over server-sent events; buttons post to /api/press and /api/qa.
"use strict";
(() => {
  const pageToken = document.querySelector("meta[name=panel-token]").content;
  const cards = () => document.querySelectorAll("article.token");
  const field = (card, name) => card.querySelector(`[data-field="${name}"]`);

  function draw(card, t) {
    card.dataset.token = t.serial;
    card.classList.toggle("card", t.form === "card");
    card.classList.toggle("fob", t.form !== "card");
    field(card, "serial").textContent = t.serial;
    card.querySelector(".brand").textContent = t.model || "";
    field(card, "code").textContent = t.battery_ok === false ? "" : (t.code || "");
    const left = t.kind === "totp" ? t.step_left : t.seconds_left;
    field(card, "countdown").textContent = t.battery_ok === false ? "battery dead" :
      (t.kind === "totp" ? `step ends in ${left} s` : (t.code ? `${left} s` : "press for a code"));
    field(card, "error").textContent = t.error || "";
    const facts = field(card, "facts");
    facts.replaceChildren();
    const rows = [["kind", `${(t.kind || "").toUpperCase()} ${(t.hash || "").toUpperCase()}, ${t.digits} digits` +
                   (t.kind === "totp" ? `, ${t.period} s` : "")],
                  ["clock", t.offset_s === undefined ? "" : `${t.offset_s >= 0 ? "+" : ""}${t.offset_s.toFixed(3)} s` + (t.frozen ? " (frozen)" : "")],
                  ["drift", t.drift_ppm === undefined ? "" : `${t.drift_ppm} ppm`],
                  ["port", t.url]];
    for (const [k, v] of rows) {
      const dt = document.createElement("span"); dt.textContent = k;
      const dd = document.createElement("span"); dd.textContent = v;
      facts.append(dt, dd);
    }
    card.querySelector(".qa").hidden = !t.qa;
    plot(card, t.history || []);
  }

  function plot(card, history) {
    const line = field(card, "plot");
    if (!history.length) { line.setAttribute("points", ""); return; }
    const t0 = history[0][0], t1 = Math.max(history[history.length - 1][0], t0 + 1);
    let lo = Math.min(...history.map((p) => p[1])), hi = Math.max(...history.map((p) => p[1]));
    if (hi - lo < 1) { lo -= 0.5; hi += 0.5; }
    const pts = history.map(([t, v]) => `${(4 + (t - t0) / (t1 - t0) * 292).toFixed(1)},${(86 - (v - lo) / (hi - lo) * 66).toFixed(1)}`);
    line.setAttribute("points", pts.join(" "));
    const last = history[history.length - 1][1];
    field(card, "plot-label").textContent = `offset ${last >= 0 ? "+" : ""}${last.toFixed(1)} s`;
  }

  function update(tokens) {
    const all = [...cards()];
    tokens.forEach((t, i) => { if (all[i]) draw(all[i], t); });
  }

  async function post(what, body, card) {
    const r = await fetch(`api/${what}`, {
      method: "POST", headers: { "Content-Type": "application/json", "X-Panel-Token": pageToken },
      body: JSON.stringify(body),
    });
    const data = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    if (data.token) draw(card, data.token);
    field(card, "error").textContent = data.error || "";
    card.dataset.answers = String(Number(card.dataset.answers || 0) + 1);
  }

  document.addEventListener("click", (event) => {
    const card = event.target.closest("article.token");
    if (!card) return;
    if (event.target.matches("[data-act=press]")) post("press", { token: card.dataset.token }, card);
    const b = event.target.closest("[data-qa-button]");
    if (b) post("qa", { token: card.dataset.token, action: b.dataset.qaButton, value: b.dataset.value || null }, card);
  });
  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-qa]");
    if (!form) return;
    event.preventDefault();
    const card = form.closest("article.token");
    post("qa", { token: card.dataset.token, action: form.dataset.qa, value: form.elements.value.value }, card);
  });

  const live = document.getElementById("live");
  const source = new EventSource("events");
  source.onopen = () => { live.textContent = "live"; live.classList.add("on"); };
  source.onerror = () => { live.textContent = "reconnecting…"; live.classList.remove("on"); };
  source.onmessage = (event) => update(JSON.parse(event.data).tokens);
})();
