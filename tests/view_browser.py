"""Helpers for tests/test_view.py: start ``python -m unsam.view`` and drive Debian's headless Chromium.

Browser builds cannot be downloaded here, so Selenium is pointed at the system
browser (``apt-get install chromium chromium-driver``: /usr/bin/chromium and
/usr/bin/chromedriver) and never at Selenium Manager. Also a script for the
README's screenshot::

    python tests/view_browser.py screenshot LABELS docs/viewer.png [KEY [LEVEL [FX FY]]]
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Without the background-networking switches Chromium keeps dialling out, and
# on a closed network those refused connections slow every page down.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,900", "--force-device-scale-factor=1",
]  # fmt: skip


def find_browser() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, or the reason they cannot be used."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the Python package selenium is not installed (pip install -e '.[test]')"
    chrome = os.environ.get("UNSAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("UNSAM_CHROMEDRIVER") or shutil.which("chromedriver")
    if not chrome or not driver:
        return "chromium and chromedriver not found (apt-get install chromium chromium-driver)"
    return chrome, driver


def make_driver(chrome: str, driver: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for f in CHROMIUM_FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile}")
    # An explicit driver path: Selenium Manager (which would try to download one) never runs.
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    d.set_page_load_timeout(30)
    d.set_script_timeout(30)
    return d


class ViewServer:
    """``python -m unsam.view ARGS --port 0`` in a subprocess; ``.url`` is the address it printed."""

    def __init__(self, *args: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unsam.view", *map(str, args), "--port", "0"],
            cwd=cwd or ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        self.url = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"serving at (http://\S+/)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.stop()
            raise RuntimeError(f"unsam.view did not start: {''.join(self.lines)} {self.proc.stderr.read()}")

    def stop(self) -> tuple[int | None, str]:
        """SIGINT (Ctrl-C), then wait; returns (exit status, rest of stdout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out or ""

    def __enter__(self) -> ViewServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_ready(drv, key: str | None = None, timeout: float = 30) -> dict:
    """Wait until the page has shown ``key`` (any image when None); returns window.unsamView's state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = drv.execute_script(
            "const v = window.unsamView; return v && {ready: v.ready, key: v.key, tti: v.tti, timings: v.timings, errors: v.errors, startError: v.startError || null};"
        )
        if st and st.get("startError"):
            raise RuntimeError(f"page failed to start: {st['startError']}")
        if st and st["ready"] and (key is None or st["key"] == key):
            return st
        time.sleep(0.02)
    raise TimeoutError(f"page not ready for {key!r} within {timeout} s: {st}")


def click_pixel(drv, side: str, x: int, y: int, shift: bool = False) -> None:
    """Click the centre of image pixel (x, y) on a panel (shift-click with ``shift``)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    pt = drv.execute_script("return window.unsamView.clientPoint(arguments[0], arguments[1], arguments[2]);", side, x, y)
    chain = ActionChains(drv)
    # W3C actions run tick by tick over all devices: pad the keyboard while the pointer moves, so the
    # shift key is down during the click (ActionChains.click and key_down pad the other device themselves).
    chain.w3c_actions.pointer_action.move_to_location(round(pt["x"]), round(pt["y"]))
    chain.w3c_actions.key_action.pause()
    if shift:
        chain.key_down(Keys.SHIFT)
    chain.click()
    if shift:
        chain.key_up(Keys.SHIFT)
    chain.perform()


@contextlib.contextmanager
def browser():
    found = find_browser()
    if isinstance(found, str):
        raise RuntimeError(found)
    with tempfile.TemporaryDirectory(prefix="unsam-chromium-") as profile:
        drv = make_driver(*found, profile)
        try:
            yield drv
        finally:
            drv.quit()


def screenshot(labels: str, out: str, key: str | None = None, level: int | None = None, fx: float = 0.42, fy: float = 0.55) -> None:
    """The README's picture: the viewer on LABELS with a mask selected, as a palette PNG."""
    import io

    from PIL import Image

    from unsam.io import read_label_json

    with ViewServer(labels, cwd=Path.cwd()) as srv, browser() as drv:
        drv.get(srv.url + (f"#key={key}" if key else ""))
        st = wait_ready(drv, key)
        key = st["key"]
        if level is not None:
            drv.execute_script("window.unsamView.setLevel(arguments[0]);", level)
        obj = read_label_json(Path(labels) / key)
        h, w = obj["image"]["height"], obj["image"]["width"]
        # Select the mask under a point a little off-centre.
        click_pixel(drv, "main", int(w * fx), int(h * fy))
        time.sleep(0.3)
        png = drv.get_screenshot_as_png()
    im = Image.open(io.BytesIO(png)).convert("RGB")
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, optimize=True)
    print(f"wrote {out} ({os.path.getsize(out)} bytes, {im.width}x{im.height})")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "screenshot":
        a = sys.argv[4:]
        screenshot(sys.argv[2], sys.argv[3], a[0] if a else None, int(a[1]) if len(a) > 1 else None, *map(float, a[2:4]))
    else:
        print(__doc__)
        raise SystemExit(2)
