"""Write .dvc/plots/offline.html: DVC's HTML page with vega, vega-lite and vega-embed inlined, so
that `dvc plots show` / `dvc plots diff` pages draw with no network (.dvc/config: plots.html_template).

    python scripts/vega_offline.py      # run by `make install`; idempotent

The libraries are the npm registry's tarballs (`npm pack NAME@VERSION`), pinned below by version
and sha256, cached outside git in $XDG_CACHE_HOME/latentwire/vendor (~/.cache/...). A cached
tarball with the right sha256 is reused without asking npm; the page is rewritten only if it
changed. The page is built from the committed .dvc/plots/offline.html.in: each
`<!-- vendor: NAME -->` line becomes a <script> holding that library's minified build.
The versions are those vl-convert-python (requirements.txt) draws the PNGs with: vega-lite 5.21
(the templates' $schema is v5), vega 6.2.0, vega-embed 7.0.2.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# name: (version, file in the tarball, sha256 of the registry tarball)
PINS = {
    "vega": ("6.2.0", "package/build/vega.min.js",
             "aa98ba8c2141f60123e98cdac229303450b1401e5c20f4434a18431e9a9a344d"),
    "vega-lite": ("5.21.0", "package/build/vega-lite.min.js",
                  "48e7a352a7d49811c3d1e15c400f5f9386b16e2affd1835939eb41b3f30b88ff"),
    "vega-embed": ("7.0.2", "package/build/vega-embed.min.js",
                   "8322f1dbe349ff275436f9edcf8c5ee87525a088c95dc85ba555289dde7c7c79"),
}
ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / ".dvc/plots/offline.html.in"
PAGE = ROOT / ".dvc/plots/offline.html"
MARKER = re.compile(r"^[ \t]*<!-- vendor: ([a-z-]+) -->[ \t]*$", re.M)
DVC_PLACEHOLDERS = ("{scripts}", "{plot_divs}", "{refresh_tag}")  # dvc_render replaces these


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "latentwire" / "vendor"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(name: str, version: str, digest: str, cache: Path) -> Path:
    """The registry tarball of name@version in the cache, checked against its pinned sha256."""
    tgz = cache / f"{name}-{version}.tgz"
    if tgz.is_file() and sha256(tgz) == digest:
        return tgz
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(f"vega_offline: npm not found: it fetches {name}@{version} from the npm registry for the "
                 "offline `dvc plots` page. Install it (Debian: apt-get install npm) and rerun `make install`.")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        r = subprocess.run([npm, "pack", f"{name}@{version}", "--pack-destination", tmp, "--json",
                            "--ignore-scripts"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"vega_offline: `npm pack {name}@{version}` failed:\n{r.stderr.strip()}")
        got = Path(tmp) / json.loads(r.stdout)[0]["filename"]
        if sha256(got) != digest:
            sys.exit(f"vega_offline: {name}@{version} from npm has sha256 {sha256(got)}, pinned {digest}: "
                     "not used")
        os.replace(got, tgz)
    return tgz


def script(name: str, tgz: Path, member: str) -> str:
    with tarfile.open(tgz) as tar:
        js = tar.extractfile(member).read().decode("utf-8")
    # inside <script> the text must not end the element, nor hold what DVC substitutes in the page
    bad = [s for s in ("</script", *DVC_PLACEHOLDERS) if s in js.lower()]
    if bad:
        sys.exit(f"vega_offline: {tgz.name}:{member} contains {bad}: cannot be inlined as is")
    version, _, digest = PINS[name]
    return f"<script>/* {name}@{version} (npm tarball sha256 {digest}) */\n{js}\n</script>"


def build(source: str, scripts: dict[str, str]) -> str:
    names = MARKER.findall(source)
    if sorted(names) != sorted(PINS):
        sys.exit(f"vega_offline: {SOURCE.name} has vendor markers {names}, expected one each of {sorted(PINS)}")
    return MARKER.sub(lambda m: scripts[m.group(1)], source)


def main() -> int:
    cache = cache_dir()
    scripts = {name: script(name, fetch(name, version, digest, cache), member)
               for name, (version, member, digest) in PINS.items()}
    page = build(SOURCE.read_text(encoding="utf-8"), scripts)
    if PAGE.is_file() and PAGE.read_text(encoding="utf-8") == page:
        return 0
    tmp = PAGE.with_name(f".{PAGE.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, PAGE)
    print(f"vega_offline: wrote {PAGE.relative_to(ROOT)} "
          f"({', '.join(f'{n}@{v[0]}' for n, v in PINS.items())}, {len(page) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
