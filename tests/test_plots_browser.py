"""The review page draws with no network: `dvc plots diff HEAD~1` in a repository with this project's
dvc.yaml, .dvc/ and metrics (tests/plots_repo.py: HEAD~1 holds half of each CSV), loaded by headless
Chromium in a network namespace of its own (where `unshare --net` works) and with every host name
resolving to nothing, with a net log.

Checked on the page that DVC writes with .dvc/config's plots.html_template (.dvc/plots/offline.html,
written by `make install`): every plot that dvc.yaml declares is an <svg> with data marks and both
revisions in its legend, the page references no http(s) script or style and requested no http(s)
URL, and its screenshot is not blank. The control is DVC's default page (vega from a CDN) of the
same plots in the same browser: it draws nothing, the checks catch its CDN requests and references,
and its screenshot is blank, so the harness is really offline and the checks can fail.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from plots_repo import REPO, declared_plots, dvc, make_repo

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
NO_CHROMIUM = "headless Chromium not found: `apt-get install chromium` (.ci/run installs it)"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
if CHROMIUM is None:  # said in pytest's default summary too, not only under -rs
    warnings.warn(f"the offline plots page is not tested in a browser: {NO_CHROMIUM}", stacklevel=1)
PAGE = REPO / ".dvc/plots/offline.html"
WINDOW = (1280, 5000)


def netns() -> list[str]:
    """`unshare --net`: a network namespace with no interface up, where this user may make one."""
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        return ["unshare", "--net"]
    return []  # the host resolver rule below still fails every http(s) host name


def load_page(page: Path, work: Path) -> tuple[str, list[str], np.ndarray]:
    """Chromium, offline: (the DOM once the scripts ran, the http(s) URLs the page asked for, the
    screenshot as an RGB array)."""
    shot, netlog = work / "shot.png", work / "net.json"
    cmd = netns() + [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={work / 'profile'}",
        f"--log-net-log={netlog}", "--virtual-time-budget=30000", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--screenshot={shot}", "--dump-dom", page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    return r.stdout, page_requests(netlog), np.asarray(Image.open(shot).convert("RGB"))


def page_requests(netlog: Path) -> list[str]:
    """The non-file URLs of the requests the page started (the net log also holds Chromium's own
    background requests, which have no file:// isolation key)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start and str(e["params"].get("network_isolation_key", "")).startswith("file://")
            and not e["params"]["url"].startswith("file:")]


class Node:
    def __init__(self, tag: str, attrs: dict):
        self.tag, self.attrs, self.children, self.text = tag, attrs, [], []

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def all_text(self) -> str:
        return "".join(t for n in self.iter() for t in n.text)


class Tree(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        self.stack[-1].text.append(data)


def external_refs(html: str) -> list[str]:
    """http(s) scripts, stylesheets, style imports and frames the page itself references."""
    refs = []
    for n in Tree(html).root.iter():
        for attr in ("src", "href"):
            url = n.attrs.get(attr) or ""
            if n.tag in ("script", "link", "iframe", "img", "embed") and url.startswith(("http:", "https:", "//")):
                refs.append(f"<{n.tag} {attr}={url}>")
        if n.tag == "style" and any(s in n.all_text() for s in ("@import", "url(http", "url(//")):
            refs.append(f"<style> {n.all_text().strip()[:80]}")
    return refs


def data_marks(svg: Node) -> int:
    """Drawn items of vega's data marks (the role-mark groups; axes, legends and titles have other roles)."""
    groups = [g for g in svg.iter() if g.tag == "g" and "role-mark" in g.attrs.get("class", "").split()]
    return sum(1 for g in groups for item in g.children
               if item.tag != "g" and item.attrs.get("opacity") != "0" and (item.tag != "path" or item.attrs.get("d")))


def drawn(dom: str) -> dict[str, tuple[str | None, int, int, str]]:
    """Per plot <div> (DVC writes one per plot into <body>, id = the plot id): (data-plot status,
    <svg> count, data marks, the <svg>'s text)."""
    body = next(n for n in Tree(dom).root.iter() if n.tag == "body")
    out = {}
    for d in (n for n in body.children if n.tag == "div"):
        svgs = [n for n in d.iter()  # vega's drawing (not the icon of its actions menu)
                if n.tag == "svg" and "marks" in n.attrs.get("class", "").split()]
        out[d.attrs["id"]] = (d.attrs.get("data-plot"), len(svgs), sum(data_marks(s) for s in svgs),
                              " ".join(s.all_text() for s in svgs))
    return out


def ink(rgb: np.ndarray) -> tuple[float, float]:
    """Share of non-white pixels, share of coloured (not grey) pixels."""
    x = rgb.astype(float) / 255
    return float((x < 0.9).any(axis=-1).mean()), float((x.max(axis=-1) - x.min(axis=-1) > 0.2).mean())


def div_id(plot_id: str) -> str:
    from dvc_render.base import Renderer

    return Renderer.remove_special_chars(plot_id)  # the <div id> DVC gives a plot


EXPECTED_IDS = {div_id(p) for p in declared_plots()}


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """`dvc plots diff HEAD~1` with the repo's page template, and with DVC's default page (control)."""
    if not PAGE.is_file():
        pytest.fail(f"{PAGE.relative_to(REPO)} missing: `make install` writes it (scripts/vega_offline.py)")
    repo = make_repo(tmp_path_factory.mktemp("plots") / "repo")
    r = dvc(repo, "plots", "diff", "HEAD~1", "-o", "offline")
    assert r.returncode == 0, r.stderr
    from dvc_render.html import PAGE_HTML  # DVC's own page: vega, vega-lite, vega-embed from a CDN

    (repo / "default.html").write_text(PAGE_HTML)
    r = dvc(repo, "plots", "diff", "HEAD~1", "-o", "cdn", "--html-template", str(repo / "default.html"))
    assert r.returncode == 0, r.stderr
    return repo / "offline/index.html", repo / "cdn/index.html"


def test_page_has_no_external_reference(pages):
    offline, cdn = pages
    assert external_refs(offline.read_text(encoding="utf-8")) == []
    assert len(external_refs(cdn.read_text(encoding="utf-8"))) == 3  # the check sees DVC's 3 CDN scripts


@needs_chromium
def test_every_declared_plot_draws_offline(pages, tmp_path):
    offline, cdn = pages
    assert len(EXPECTED_IDS) == len(declared_plots()) >= 3  # plot ids stay distinct as <div> ids

    dom, requests, shot = load_page(offline, tmp_path / "offline")
    plots = drawn(dom)
    assert set(plots) == EXPECTED_IDS
    for pid, (status, svgs, marks, text) in plots.items():
        assert (status, svgs) == ("drawn", 1), (pid, status, svgs)
        assert marks > 0, pid
        assert "HEAD~1" in text and "workspace" in text, (pid, text[:200])  # both revisions, in the legend
    assert requests == []
    assert shot.shape[:2] == (WINDOW[1], WINDOW[0])
    share, colour = ink(shot)
    assert share > 0.01 and colour > 0.001, (share, colour)  # measured here: 0.039, 0.011

    dom, requests, shot = load_page(cdn, tmp_path / "cdn")  # control: DVC's default page, same browser
    plots = drawn(dom)
    assert set(plots) == EXPECTED_IDS and all(svgs == 0 for _, svgs, _, _ in plots.values())
    assert sorted(u.split("/npm/")[1].split("@")[0] for u in requests) == ["vega", "vega-embed", "vega-lite"]
    share, colour = ink(shot)
    assert share < 0.01 and colour < 0.001, (share, colour)  # blank: 0.0, 0.0


def load_vega_offline():
    spec = importlib.util.spec_from_file_location("vega_offline", REPO / "scripts/vega_offline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_inlines_the_pinned_libraries(pages):
    """The written page holds each pinned library's build, byte for byte from its cached tarball,
    and the same vega as vl-convert, which draws the PNGs (python -m latentwire plots)."""
    import tarfile

    import vl_convert

    from latentwire import plots

    vo = load_vega_offline()
    html = pages[0].read_text(encoding="utf-8")
    for name, (version, member, digest) in vo.PINS.items():
        tgz = vo.cache_dir() / f"{name}-{version}.tgz"
        assert vo.sha256(tgz) == digest
        with tarfile.open(tgz) as tar:
            assert tar.extractfile(member).read().decode() in html, name
    assert vo.PINS["vega"][0] == vl_convert.get_vega_version()
    assert vo.PINS["vega-lite"][0].startswith(plots.VL_VERSION + ".")
    assert plots.VL_VERSION in vl_convert.get_vegalite_versions()


def test_bad_cached_tarball_is_not_used(tmp_path, monkeypatch, capsys):
    """A cached tarball whose sha256 is not the pinned one is fetched again; without npm that stops
    with a message saying how to get npm, and the page is not written."""
    vo = load_vega_offline()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no npm
    monkeypatch.setattr(vo, "PAGE", tmp_path / "offline.html")
    (tmp_path / "latentwire/vendor").mkdir(parents=True)
    version = vo.PINS["vega"][0]
    (tmp_path / f"latentwire/vendor/vega-{version}.tgz").write_bytes(b"not the registry's tarball")
    with pytest.raises(SystemExit) as e:
        vo.main()
    assert "npm not found" in str(e.value) and "apt-get install npm" in str(e.value)
    assert not (tmp_path / "offline.html").exists()
