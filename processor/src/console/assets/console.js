// The console's only script (docs/CONSOLE.md): times in the browser's zone (UTC stays
// on hover), and the live tail. No library, nothing loaded from elsewhere.
"use strict";

function localTime(iso) {
  const t = new Date(iso);
  return isNaN(t) ? iso : t.toLocaleString();
}

function localiseTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    if (!el.dataset.local) {
      el.textContent = localTime(el.getAttribute("datetime"));
      el.dataset.local = "1";
    }
  }
}

const MINOR = { JPY: 0, KRW: 0, ISK: 0, CLP: 0, VND: 0, XOF: 0, XAF: 0, UGX: 0, PYG: 0,
  BHD: 3, KWD: 3, OMR: 3, JOD: 3, TND: 3, LYD: 3, IQD: 3 };

function money(m) {
  if (!m) return "—";
  const digits = MINOR[m.currencyCode] ?? 2;
  return m.currencyCode + " " + (m.value / 10 ** digits).toFixed(digits);
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}

function follow(state) {
  const body = document.querySelector("#live tbody");
  let count = 0;
  const source = new EventSource(state.dataset.stream);
  source.addEventListener("open", () => {
    state.textContent = count ? "Following (" + count + " updates)" : "Following: updates appear here as they are committed.";
    state.className = "ok";
  });
  source.addEventListener("payment_update", (e) => {
    const u = JSON.parse(e.data);
    const row = body.insertRow(0);
    const when = document.createElement("time");
    when.setAttribute("datetime", u.committedAt);
    when.title = u.committedAt;
    row.insertCell().appendChild(when);
    cell(row, String(u.seq), "num");
    cell(row, u.location);
    const link = document.createElement("a");
    link.href = "/console/payments/" + encodeURIComponent(u.paymentIntentId);
    link.textContent = u.paymentIntentId;
    row.insertCell().appendChild(link);
    cell(row, u.status);
    cell(row, money(u.totalAmount || u.amount));
    cell(row, u.orderId || u.reference || "—");
    cell(row, u.cause, "id");
    localiseTimes(row);
    while (body.rows.length > 200) body.deleteRow(-1);
    count += 1;
    state.textContent = "Following (" + count + " updates)";
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself, with Last-Event-ID: nothing is missed.
    state.textContent = "Connection lost; reconnecting…";
    state.className = "error";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localiseTimes(document);
  const state = document.getElementById("live-state");
  if (state) follow(state);
});
