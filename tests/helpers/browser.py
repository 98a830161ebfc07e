"""Pages in a real headless browser (Debian's chromium): the DOM after the page's scripts ran, its
console, screenshots. Used by tests/unit/test_report.py and benchmarks/bench_report.py."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                  "--enable-logging=stderr", "--v=0"]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("the report tests render pages in a real headless browser, and no chromium was "
                "found on PATH: install it with `apt-get update && apt-get install -y chromium`",
                pytrace=False)


def run_chromium(page: Path, profile: Path, *extra: str, timeout: int = 90):
    """Run headless chromium on a local page with a fresh profile; (stdout, console lines)."""
    cmd = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra,
           page.resolve().as_uri()]
    shutil.rmtree(profile, ignore_errors=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout, console


def dump_dom(page: Path, profile: Path):
    """The DOM after the page's scripts ran, and the console lines chromium logged. The page sets
    <body data-ready="1"> once every plot is drawn; if the dump came before that, retry with a
    virtual-time budget that lets pending tasks finish."""
    dom, console = run_chromium(page, profile, "--dump-dom")
    if body_attrs(dom).get("ready") != "1":
        dom, console = run_chromium(page, profile, "--dump-dom", "--virtual-time-budget=5000")
    return dom, console


def screenshot(page: Path, profile: Path, out: Path, size=(1400, 2400)) -> Path:
    run_chromium(page, profile, f"--screenshot={out}", f"--window-size={size[0]},{size[1]}")
    assert out.is_file(), "chromium wrote no screenshot"
    return out


def body_attrs(dom: str) -> dict:
    match = re.search(r"<body([^>]*)>", dom)
    return _attrs(match.group(1)) if match else {}


def section_attrs(dom: str, section_id: str) -> dict:
    match = re.search(rf'<section id="{section_id}"([^>]*)>', dom)
    assert match, f"no section #{section_id} in the rendered page"
    return _attrs(match.group(1))


def _attrs(text: str) -> dict:
    return {k: v for k, v in re.findall(r'data-([a-z-]+)="([^"]*)"', text)}


def assert_clean(dom: str, console: list[str]) -> dict:
    body = body_attrs(dom)
    assert body.get("ready") == "1", f"the page did not finish drawing: {body}"
    assert body.get("errors") == "0", f"uncaught errors: {body.get('error-text')}"
    assert not console, "console output (the page logs nothing when all is well):\n" + "\n".join(console)
    return body


def assert_self_contained(text: str) -> None:
    """Nothing is fetched at view time: no external script, stylesheet, image or font."""
    head = text[:text.index("<script>", text.index("</head>"))] if "</head>" in text else text
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", text[:200_000] + text[-300_000:])
    assert "@import" not in head and "url(http" not in head


def pixel_stddev(png: Path) -> float:
    try:
        from PIL import Image, ImageStat
    except ImportError:  # pragma: no cover
        pytest.fail("Pillow is needed to decode the screenshot (pip install pillow; matplotlib "
                    "installs it)", pytrace=False)
    with Image.open(png) as im:
        return ImageStat.Stat(im.convert("L")).stddev[0]
