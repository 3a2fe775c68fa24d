"""Drag the book's α and β sliders in a real JupyterLab page, in headless Chromium.

``tests/test_widgets.py`` moves the sliders through the kernel; this script checks the part a
unit test cannot: that JupyterLab renders the widgets (the ``@jupyter-widgets/jupyterlab-manager``
extension is installed and talks to the kernel) and that dragging a slider with the mouse
redraws the figure under it within about a second.

For each of chapter 03 (β) and chapter 07 (α) it

1. writes a copy of the chapter with papermill's parameters injected (``--prepare-only``: nothing
   is executed) into a scratch folder,
2. starts ``jupyter lab`` from the project's virtual environment on that folder,
3. opens the notebook in Chromium, runs every cell (JupyterLab's own ``Run All`` command),
4. waits for the slider, records the PNG under it, drags the slider's handle with the mouse,
   and records how long the PNG took to change (the wait includes the browser's polling),
5. saves a screenshot before and after the drag into ``--out``.

It exits non-zero when a slider is missing or the picture does not change. The chapters read
the run folder given by ``--run`` (chapter 07 reuses its ablation runs when they are complete;
point it at a fresh folder and it trains them, which takes minutes).

Needs, besides the project's ``.venv``: Chromium and its driver (Debian: ``apt-get install
chromium chromium-driver``) and Selenium in the Python that runs this script (``pip install
selenium``). Not part of the test suite: CI machines have no browser.

    python benchmarks/jupyterlab_sliders.py --run runs/book-cpu --profile cpu --out /tmp/sliders
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = {"03_feature_clipping.ipynb": "β", "07_ablations.ipynb": "α"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(venv: Path, chapter: str, work: Path, profile: str, run: Path, data_root: Path) -> Path:
    """Chapter with the parameters injected and nothing executed (papermill ``--prepare-only``)."""
    out = work / chapter
    subprocess.run(
        [
            str(venv / "bin" / "papermill"),
            "--prepare-only",
            str(ROOT / "notebooks" / chapter),
            str(out),
            "-p",
            "profile",
            profile,
            "-p",
            "run_dir",
            str(run),
            "-p",
            "data_root",
            str(data_root),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return out


def _wait(condition, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")


def _slider_png(driver, label: str) -> str | None:
    """sha1 of the PNG in the Output widget that follows the slider labelled ``label``."""
    src = driver.execute_script(
        """
        for (const box of document.querySelectorAll('.jp-OutputArea-output .widget-vbox')) {
          const lab = box.querySelector('.widget-slider .widget-label, .widget-hslider .widget-label');
          if (!lab || lab.textContent.trim() !== arguments[0]) continue;
          const img = box.querySelector('.widget-output img');
          return img ? img.getAttribute('src') : null;
        }
        return null;""",
        label,
    )
    if not src:
        return None
    return hashlib.sha1(base64.b64decode(src.split(",", 1)[1])).hexdigest()


def _slider_value(driver, label: str) -> str | None:
    return driver.execute_script(
        """
        for (const box of document.querySelectorAll('.jp-OutputArea-output .widget-vbox')) {
          const lab = box.querySelector('.widget-label');
          if (!lab || lab.textContent.trim() !== arguments[0]) continue;
          const r = box.querySelector('.widget-readout');
          return r ? (r.value !== undefined && r.value !== '' ? r.value : r.textContent) : null;
        }
        return null;""",
        label,
    )


def check_chapter(driver, base: str, token: str, chapter: str, label: str, out: Path, run_timeout: float) -> dict:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/lab/tree/{chapter}?token={token}&reset")
    _wait(
        lambda: driver.execute_script(
            "return !!(window.jupyterapp && window.jupyterapp.shell"
            " && window.jupyterapp.shell.currentWidget"
            " && window.jupyterapp.shell.currentWidget.sessionContext"
            " && window.jupyterapp.shell.currentWidget.sessionContext.session"
            " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel)"
        ),
        120,
        "the notebook and its kernel",
    )
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    start = time.monotonic()
    _wait(lambda: _slider_png(driver, label), run_timeout, f"the {label} slider's figure", poll=1.0)
    shown = time.monotonic() - start
    before = _slider_png(driver, label)
    value_before = _slider_value(driver, label)
    for handle in driver.find_elements(By.CSS_SELECTOR, ".widget-vbox .noUi-handle"):
        box = handle.find_element(By.XPATH, "./ancestor::div[contains(@class,'widget-vbox')][1]")
        if box.find_element(By.CSS_SELECTOR, ".widget-label").text.strip() == label:
            break
    else:
        raise AssertionError(f"{chapter}: no draggable handle on the {label} slider")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", box)
    driver.save_screenshot(str(out / f"{Path(chapter).stem}_before.png"))
    track = handle.find_element(By.XPATH, "./ancestor::div[contains(@class,'noUi-target')][1]")
    # drag the handle two thirds of the track to the right (left if it already sits on the right): far
    # enough that a selection slider of two values (the smoke profile's α) snaps to the other one
    shift = 2 * track.size["width"] // 3
    if handle.location["x"] - track.location["x"] > track.size["width"] / 2:
        shift = -shift
    moved = time.monotonic()
    ActionChains(driver).click_and_hold(handle).move_by_offset(shift // 2, 0).move_by_offset(
        shift - shift // 2, 0
    ).release().perform()
    after = _wait(lambda: (p := _slider_png(driver, label)) != before and p, 30, "the redrawn figure", poll=0.05)
    redraw = time.monotonic() - moved
    time.sleep(0.5)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", box)
    driver.save_screenshot(str(out / f"{Path(chapter).stem}_after.png"))
    value_after = _slider_value(driver, label)
    if value_after == value_before:
        raise AssertionError(f"{chapter}: the {label} slider's value did not change ({value_before})")
    return {
        "chapter": chapter,
        "slider": label,
        "slider_shown_s": round(shown, 1),
        "value_before": value_before,
        "value_after": value_after,
        "png_before": before,
        "png_after": after,
        "redraw_s": round(redraw, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "book-cpu", help="run folder the chapters read")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("sliders-check"), help="screenshots and result.json")
    ap.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="the dataset the run folder was made from (default: the run's data.root)",
    )
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--run-timeout", type=float, default=1800, help="seconds allowed for one chapter's Run All")
    args = ap.parse_args(argv)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        sys.exit("Selenium is missing: pip install selenium (and apt-get install chromium chromium-driver)")
    for exe in (args.chromium, args.chromedriver, args.venv / "bin" / "jupyter"):
        if not Path(exe).exists():
            sys.exit(f"{exe} not found: see this script's docstring for what it needs")

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "notebooks"
    work.mkdir(exist_ok=True)
    run = args.run.resolve()
    if args.data_root is None:
        from esol_lib.runtime.rundir import RunDir

        args.data_root = Path(RunDir(run).load_config().data.root)
    for chapter in CHAPTERS:
        _prepare(args.venv, chapter, work, args.profile, run, args.data_root.resolve())

    port, token = _free_port(), "esol-slider-check"
    lab = subprocess.Popen(
        [
            str(args.venv / "bin" / "jupyter"),
            "lab",
            "--no-browser",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            "--allow-root",
            f"--ServerApp.root_dir={work.resolve()}",
            "--LabApp.expose_app_in_browser=True",
            "--ServerApp.ip=127.0.0.1",
        ],
        cwd=ROOT,
        stdout=open(args.out / "jupyterlab.log", "w"),
        stderr=subprocess.STDOUT,
    )
    opts = webdriver.ChromeOptions()
    opts.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=opts)
    results, failed = [], False
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _up(port), 60, "jupyter lab to listen")
        version = subprocess.run(
            [str(args.venv / "bin" / "jupyter"), "lab", "--version"], capture_output=True, text=True
        ).stdout.strip()
        for chapter, label in CHAPTERS.items():
            try:
                r = check_chapter(driver, base, token, chapter, label, args.out, args.run_timeout)
                print(
                    f"{chapter}: {label} {r['value_before']} -> {r['value_after']}, figure redrawn "
                    f"{r['redraw_s']} s after the drag (shown {r['slider_shown_s']} s after Run All)",
                    flush=True,
                )
            except (AssertionError, TimeoutError) as err:
                driver.save_screenshot(str(args.out / f"{Path(chapter).stem}_failed.png"))
                r, failed = {"chapter": chapter, "slider": label, "error": str(err)}, True
                print(f"{chapter}: FAILED: {err}", flush=True)
            results.append(r)
        summary = {
            "jupyterlab": version,
            "browser": driver.capabilities.get("browserVersion"),
            "profile": args.profile,
            "run": str(run),
            "results": results,
        }
        (args.out / "result.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.out / 'result.json'} and screenshots")
    finally:
        driver.quit()
        lab.terminate()
        lab.wait(timeout=30)
    return 1 if failed else 0


def _up(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
