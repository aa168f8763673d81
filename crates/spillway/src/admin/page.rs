//! `GET /`: the status page. One self-contained HTML document (inline CSS
//! and JS, no CDN, no fonts to fetch), so it works on an air-gapped host.
//! It holds no data: once a second it fetches `/status` and the newest
//! samples of `/status/history`, with `Authorization: Bearer` when the
//! URL carries `#token=...` (a fragment never reaches the server or its
//! logs). When a fetch fails it says "disconnected" and greys the numbers
//! out instead of showing them as if they were live.

pub const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>spillway status</title>
<style>
:root{--ok:#1a7f37;--warn:#b35900;--bad:#c62828;--panic:#7b1fa2;--mute:#666;--line:#ddd;--bg:#fafafa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:#111}
header{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:center;padding:.6em 1em;background:#fff;border-bottom:1px solid var(--line);position:sticky;top:0}
h1{font-size:1.1em;margin:0}
h2{font-size:1em;margin:0}
.pill{padding:.1em .6em;border-radius:1em;font-size:.85em;color:#fff;background:var(--mute)}
.pill.ok{background:var(--ok)}.pill.bad{background:var(--bad)}.pill.warn{background:var(--warn)}
main{padding:1em;display:grid;gap:1em;grid-template-columns:repeat(auto-fill,minmax(min(100%,34em),1fr))}
main.stale .num,main.stale svg,main.stale table{opacity:.25}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.8em;min-width:0}
.card.trouble{border-color:var(--bad);box-shadow:0 0 0 2px #c6282833}
.row{display:flex;flex-wrap:wrap;gap:.4em .8em;align-items:baseline}
.mute{color:var(--mute);font-size:.85em;overflow-wrap:anywhere}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(10em,1fr));gap:.6em;margin:.6em 0}
.metric .num{font-size:1.25em;font-variant-numeric:tabular-nums}
svg.spark{width:100%;height:32px;display:block}
svg.spark polyline{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}
.bar{height:.7em;background:#eee;border-radius:.35em;overflow:hidden}
.bar>div{height:100%;background:var(--ok)}
.bar.hi>div{background:var(--warn)}.bar.full>div{background:var(--bad)}
table{width:100%;border-collapse:collapse;font-size:.85em;margin-top:.4em}
th,td{text-align:left;padding:.2em .4em;border-bottom:1px solid var(--line)}
td:first-child{overflow-wrap:anywhere}
td:last-child{overflow-wrap:break-word}
@media (max-width:600px){table{font-size:.78em}}
tr.healthy td:first-child{border-left:4px solid var(--ok)}
tr.ejected td:first-child{border-left:4px solid var(--warn)}
tr.down td:first-child{border-left:4px solid var(--bad)}
tr.panic td:first-child{border-left:4px solid var(--panic)}
.tag{font-size:.75em;padding:0 .4em;border-radius:.3em;background:#eee}
.tag.bad{background:var(--bad);color:#fff}
details{margin-top:.4em}
</style></head>
<body>
<header><h1>spillway</h1><span id="conn" class="pill">connecting</span>
<span id="meta" class="mute"></span><span id="reload" class="mute"></span></header>
<main id="routes"></main>
<script>
"use strict";
const WINDOW = 900;
const token = (new URLSearchParams(location.hash.slice(1))).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
// Keyed by route name: no prototype, so a route named __proto__ or
// constructor is a route like any other.
const dict = () => Object.create(null);
let hist = dict(), closes = dict(), lastT = 0, lastClose = 0, connected = false;
const $ = id => document.getElementById(id);
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
function num(x, unit) {
  if (x == null || !isFinite(x)) return "–";
  const k = ["", "k", "M", "G", "T"]; let i = 0; let v = Math.abs(x);
  while (v >= 1000 && i < k.length - 1) { v /= 1000; i++; }
  const s = (v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)) + k[i];
  return (x < 0 ? "-" : "") + s + (unit || "");
}
function bytes(x) {
  if (x == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; let v = x;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + u[i];
}
function age(s) {
  if (s == null) return "–";
  s = Math.max(0, Math.round(s));
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}
function spark(series, colors) {
  let max = 0;
  for (const s of series) for (const v of s) if (v > max) max = v;
  if (max <= 0) max = 1;
  const lines = series.map((s, j) => {
    const n = s.length, pts = [];
    for (let i = 0; i < n; i++) {
      const x = n > 1 ? (i / (n - 1)) * 300 : 300;
      pts.push(x.toFixed(1) + "," + (31 - (s[i] / max) * 29).toFixed(1));
    }
    return '<polyline stroke="' + colors[j] + '" points="' + pts.join(" ") + '"/>';
  });
  return '<svg class="spark" viewBox="0 0 300 32" preserveAspectRatio="none" role="img">' + lines.join("") + "</svg>";
}
function metric(label, value, svg) {
  return '<div class="metric"><div class="mute">' + esc(label) + '</div><div class="num">' + value + "</div>" + (svg || "") + "</div>";
}
function col(h, k) { return (h && h[k]) || []; }
function add(a, b) { return a.map((v, i) => v + (b[i] || 0)); }
function last(a) { return a.length ? a[a.length - 1] : null; }
function upState(u, all) {
  if (u.ejected) return "ejected";
  if (!u.healthy) return all ? "panic" : "down";
  return "healthy";
}
function routeCard(r, now) {
  const h = hist[r.name] || {};
  const trouble = [];
  const unit = r.mode === "queue" ? " msg/s" : " B/s";
  const rin = col(h, "rate_in"), rout = col(h, "rate_out");
  let html = '<div class="row"><h2>' + esc(r.name) + '</h2><span class="tag">' + esc(r.mode) + '</span><span class="tag">' + esc(r.state) + "</span>";
  const where = r.listeners.map(l => esc(l.role) + " " + esc(l.address));
  if (r.mode === "queue") where.push("from " + esc(r.from), "to " + esc(r.to));
  let body = '<div class="mute">' + where.join(" · ") + "</div>";
  body += '<div class="grid">' + metric("in", num(last(rin), unit), spark([rin], ["#1565c0"])) + metric("out", num(last(rout), unit), spark([rout], ["#2e7d32"]));
  if (r.mode === "queue") {
    const dm = col(h, "depth_memory"), dd = col(h, "depth_disk");
    const d = r.depth || {};
    body += '<div class="depth" data-depth="' + esc(d.messages) + '" hidden></div>';
    body += metric("queued: memory / disk", num(d.memory_messages) + " / " + num(d.disk_messages), spark([add(dm, dd), dd], ["#6a1b9a", "#ef6c00"]));
    body += metric("oldest message", age(r.oldest_age_seconds), spark([col(h, "oldest_age")], ["#ad1457"]));
    body += "</div>";
    const max = r.max_disk || 0, used = d.disk_bytes || 0;
    const frac = max > 0 ? Math.min(1, used / max) : 0;
    body += '<div class="mute">disk ' + bytes(used) + (max > 0 ? " of " + bytes(max) + " (" + Math.round(frac * 100) + "%)" : " (max_disk unbounded)") + "</div>";
    body += '<div class="bar' + (frac >= 0.95 ? " full" : frac >= 0.8 ? " hi" : "") + '"><div style="width:' + (frac * 100).toFixed(1) + '%"></div></div>';
    if (r.poisoned) trouble.push("spool poisoned");
    if (r.blocked_producers > 0) trouble.push(r.blocked_producers + " producer(s) blocked: disk tier full");
    if (r.no_consumer_since != null && now - r.no_consumer_since > 60) trouble.push("no consumer for " + age(now - r.no_consumer_since));
    const peers = r.peers || [];
    body += "<table><thead><tr><th>" + esc(r.producers) + " producers, " + esc(r.consumers) + " consumers</th><th>bytes</th><th>connected</th></tr></thead><tbody>";
    for (const p of peers) body += "<tr><td>" + esc(p.role) + " " + esc(p.address) + "</td><td>" + bytes(p.bytes) + "</td><td>" + age(now - p.since) + "</td></tr>";
    if (r.peers_total > peers.length) body += '<tr><td colspan="3" class="mute">and ' + (r.peers_total - peers.length) + " more</td></tr>";
    body += "</tbody></table>";
  } else {
    body += metric("connections", num(r.connections_active), spark([col(h, "connections")], ["#37474f"])) + "</div>";
    const ups = r.upstreams || [];
    const allDown = ups.length > 0 && ups.every(u => !u.healthy || u.ejected);
    if (allDown) trouble.push("every upstream down");
    body += "<table><thead><tr><th>upstream</th><th>state</th><th>active</th><th>picks</th><th>connect errors</th><th>last check</th></tr></thead><tbody>";
    for (const u of ups) {
      const st = upState(u, allDown), f = u.connect_failures || {};
      const errs = Object.keys(f).filter(k => f[k] > 0).map(k => esc(k) + " " + num(f[k])).join(", ") || "0";
      body += '<tr class="' + st + '" data-state="' + st + '"><td>' + esc(u.address) + "</td><td>" + st + "</td><td>" + num(u.active) + "</td><td>" + num(u.picked) + "</td><td>" + errs + "</td><td>" + esc(u.last_check || "–") + "</td></tr>";
    }
    body += "</tbody></table>";
  }
  const cl = closes[r.name] || [];
  if (cl.length) {
    body += "<details><summary>recent closes (" + cl.length + ")</summary><table><tbody>";
    for (const c of cl.slice().reverse()) body += "<tr><td>" + age(now - c.at) + " ago</td><td>" + esc(c.peer) + "</td><td>" + esc(c.reason) + "</td></tr>";
    body += "</tbody></table></details>";
  }
  for (const t of trouble) html += '<span class="tag bad">' + esc(t) + "</span>";
  return '<section class="card' + (trouble.length ? " trouble" : "") + '" data-route="' + esc(r.name) + '">' + html + "</div>" + body + "</section>";
}
function merge(h) {
  const now = h.now || 0;
  if (h.full) { hist = dict(); closes = dict(); lastT = 0; lastClose = 0; }
  for (const [name, c] of Object.entries(h.routes || {})) {
    const cl = c.closes || [];
    delete c.closes;
    closes[name] = (closes[name] || []).concat(cl).slice(-50);
    for (const x of cl) if (x.id > lastClose) lastClose = x.id;
    const cur = hist[name] || (hist[name] = dict());
    for (const [k, v] of Object.entries(c)) cur[k] = (cur[k] || []).concat(v);
    const keep = (cur.t || []).findIndex(t => t > now - WINDOW);
    if (keep > 0) for (const k of Object.keys(cur)) cur[k] = cur[k].slice(keep);
    const t = last(cur.t || []);
    if (t != null && t > lastT) lastT = t;
  }
}
async function get(path) {
  const r = await fetch(path, {headers, cache: "no-store"});
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}
function setConn(ok, why) {
  connected = ok;
  const c = $("conn");
  c.textContent = ok ? "live" : "disconnected";
  c.className = "pill " + (ok ? "ok" : "bad");
  c.title = why || "";
  $("routes").classList.toggle("stale", !ok);
}
async function tick(full) {
  try {
    const h = await get("/status/history" + (full ? "" : "?since=" + lastT + "&closes_after=" + lastClose));
    h.full = full;
    merge(h);
    const s = await get("/status");
    const now = h.now || Date.now() / 1000;
    $("meta").textContent = "v" + s.version + (s.draining ? " · draining" : s.ready ? " · ready" : " · not ready") + (s.config ? " · " + s.config : "");
    const rl = s.reloads || {};
    $("reload").textContent = rl.last_result ? "last reload: " + rl.last_result + ", " + age(now - rl.last_at) + " ago" : "no reload yet";
    $("routes").innerHTML = s.routes.map(r => routeCard(r, now)).join("");
    setConn(true);
    return true;
  } catch (e) {
    setConn(false, String(e));
    return false;
  }
}
(async function loop() {
  let loaded = await tick(true);
  setInterval(async () => { loaded = await tick(!loaded) || false; }, 1000);
})();
</script>
</body></html>
"##;

#[cfg(test)]
mod tests {
    use super::PAGE;

    #[test]
    fn the_page_is_self_contained_and_small() {
        assert!(PAGE.len() < 24 << 10, "{} bytes", PAGE.len());
        for external in ["http://", "https://", "//cdn", "@import", "<link", "src=\""] {
            assert!(!PAGE.contains(external), "the page loads {external}");
        }
    }
}
