"""Render `dvc plots show` in a real headless browser and check that every plot drew, with data points.

    python bench/check_plots_in_browser.py --vega-dir /tmp/vega
    python bench/check_plots_in_browser.py --vega-dir /tmp/vega --browser chromium --revs HEAD~1  # plots diff

DVC's HTML loads vega from a CDN; offline, give the three builds instead (from npm, no CDN needed):
    cd /tmp/vega && npm pack vega@5 vega-lite@5 vega-embed@6 && for f in *.tgz; do tar xzf $f --one-top-level; done
and a headless Chromium (Debian: `apt-get install chromium-headless-shell`). Prints one line per plot and exits 1
if any plot failed to render or has no data points in the browser's vega view.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BUILDS = {"vega": "vega.min.js", "vega-lite": "vega-lite.min.js", "vega-embed": "vega-embed.min.js"}
# Wraps vegaEmbed: records for each plot whether it rendered and how many data rows its view holds.
PROBE = """<script>
window.plotCheck = [];
const realEmbed = vegaEmbed;
vegaEmbed = function (target, spec, options) {
  const entry = {plot: target, points: 0, rendered: false, error: null};
  window.plotCheck.push(entry);
  return realEmbed(target, spec, options).then(result => {
    // vega-lite puts a spec's inline values into the view's "source_0" dataset: the rows the marks are drawn from
    entry.points = result.view.data("source_0").length;
    entry.rendered = !!document.querySelector(`${target} canvas, ${target} svg`);
    return result;
  }).catch(error => { entry.error = String(error); });
};
window.addEventListener("load", () => setTimeout(() => {
  const out = document.createElement("pre");
  out.id = "plot-check";
  out.textContent = JSON.stringify(window.plotCheck);
  document.body.appendChild(out);
}, 2000));
</script>
"""


def find_build(vega_dir, name):
    found = sorted(Path(vega_dir).rglob(BUILDS[name]))
    if not found:
        sys.exit(f"error: no {BUILDS[name]} under {vega_dir}; see this script's docstring for how to get it.")
    return found[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vega-dir", required=True, help="folder holding the vega, vega-lite, vega-embed builds")
    parser.add_argument("--browser", default="chromium-headless-shell")
    parser.add_argument("--revs", nargs="*", default=[], help="revisions to compare (dvc plots diff)")
    args = parser.parse_args()
    browser = shutil.which(args.browser) or sys.exit(f"error: {args.browser} not found; install a headless Chromium.")
    out = Path(tempfile.mkdtemp(prefix="plots-"))
    command = ["dvc", "plots", "diff", *args.revs] if args.revs else ["dvc", "plots", "show"]
    subprocess.run([*command, "-o", str(out)], check=True, capture_output=True)
    html = (out / "index.html").read_text(encoding="utf-8")
    for name in BUILDS:
        shutil.copy(find_build(args.vega_dir, name), out / BUILDS[name])
        html = re.sub(rf'src="https://cdn\.jsdelivr\.net/npm/{name}@[^"]*"', f'src="{BUILDS[name]}"', html)
    html = html.replace("<body>", "<body>" + PROBE, 1)
    (out / "index.html").write_text(html, encoding="utf-8")
    dom = subprocess.run([browser, "--no-sandbox", "--allow-file-access-from-files", "--virtual-time-budget=20000",
                          "--dump-dom", (out / "index.html").as_uri()], capture_output=True, text=True, timeout=300)
    match = re.search(r'<pre id="plot-check">(.*?)</pre>', dom.stdout, re.S)
    if not match:
        sys.exit(f"error: the page did not report back; browser stderr:\n{dom.stderr[-2000:]}")
    plots = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    bad = [p for p in plots if p["error"] or not p["rendered"] or p["points"] == 0]
    for p in plots:
        status = "ok " if p not in bad else "BAD"
        print(f"{status} {p['points']:6d} points  {p['plot']}" + (f"  {p['error']}" if p["error"] else ""))
    print(f"{len(plots) - len(bad)} of {len(plots)} plots rendered with data (HTML in {out})")
    sys.exit(1 if bad or not plots else 0)


if __name__ == "__main__":
    main()
