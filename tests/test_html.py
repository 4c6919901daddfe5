"""``index.html``, the leaderboard as one self-contained web page (:mod:`eebench.report.html`), from a
small real report (digits: threshold with seeds 0 and 1, JEI-DNN, and a threshold variant with three
budget levels): written again byte for byte from the same table; without per-sample arrays, still a
page, with the standard errors empty and one line saying why; and opened in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, which ``.ci/run`` installs; the browser tests skip,
saying why, where there is none, and fail under CI): it loads from ``file://`` with no console error
and no request, every setting's table has one row per method variant and reorders on a click on a
column header, every setting's figure draws one curve per method, and hovering a point shows its
tooltip. Screenshots of the page (``page.png``) and of each setting's tooltip (``tooltip_<setting>.png``) are
saved under the browser test's temporary folder."""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from eebench.cli.main import main
from eebench.report import table

SWEEP = [("threshold", 0, {}), ("threshold", 1, {}), ("jei", 0, {}), ("threshold", 0, {"q_grid": [0.5, 1.0, 1.5]})]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
#: The flags every headless Chromium of the suite starts with (no network here: without the last
#: four, Chromium tries to reach Google's services and logs errors).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """``eebench report`` of real digits runs (each method at its test parameters): the results folder."""
    from eebench.harness.config import resolve
    from eebench.harness.method import load_methods
    from eebench.harness.runner import RunOptions, run

    runs, results = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("results")
    methods = load_methods()
    for method, seed, extra in SWEEP:
        config = resolve(method, "digits", None, seed)
        config.method_params.update({**methods.get(method).test_parameters, **extra})
        run(config, RunOptions(out_dir=runs))
    assert main(["report", str(runs), "--out", str(results), "--bootstrap", "200"]) == 0
    return results


def _rows(page: str, key: str) -> list[str]:
    body = page.split(f'<table id="board-{key}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr data-variant="([^"]*)"', body)


def test_page_is_rewritten_byte_for_byte_from_the_table(report: Path, tmp_path: Path):
    page = (report / "index.html").read_bytes()
    again = tmp_path / "again"
    again.mkdir()
    for p in [report / table.TABLE_NAME, *report.glob(table.SAMPLES_GLOB)]:
        shutil.copy(p, again / p.name)
    assert main(["report", str(again / table.TABLE_NAME), "--out", str(again), "--bootstrap", "200"]) == 0
    assert (again / "index.html").read_bytes() == page
    text = page.decode()
    assert len(page) < 5 * 10**6
    outside = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    assert outside.count("<script>") == 0 and not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=", outside)
    board = pd.read_csv(report / "leaderboard.csv")
    for (ds, bb), g in board.groupby(["dataset", "backbone"]):
        assert _rows(text, f"{ds}_{bb}") == [s.replace("&", "&amp;").replace('"', "&quot;") for s in g["variant"]]
    assert "± " in text and "Standard errors and ties are left empty" not in text


def test_without_samples_the_standard_errors_are_empty_and_the_page_says_why(report: Path, tmp_path: Path):
    shutil.copy(report / table.TABLE_NAME, tmp_path / table.TABLE_NAME)     # no samples_*.parquet beside it
    assert main(["report", str(tmp_path / table.TABLE_NAME), "--out", str(tmp_path), "--bootstrap", "200"]) == 0
    text = (tmp_path / "index.html").read_text()
    assert text.count("Standard errors and ties are left empty") == 1
    tables = "".join(re.findall(r"<table.*?</table>", text))
    cells = re.findall(r'<span class="se">([^<]*)</span>', tables)
    assert len(cells) > 3 * 10 and set(cells) == {""} and "†" not in tables
    assert len(_rows(text, "digits_vit_digits")) == 3


# ---------------------------------------------------------------------------------------------
# in a real browser


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver (Selenium), its console log kept."""
    if not (CHROMIUM and DRIVER):
        reason = "no headless Chromium here (apt-get install chromium chromium-driver; .ci/run installs both)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="eebench-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,800", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(condition, what: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_page_in_a_browser(browser, report: Path, tmp_path: Path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get((report / "index.html").as_uri())
    drawn = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.EEBENCH_READY.then(() => done('drawn'), (e) => done(String(e)));")
    assert drawn == "drawn"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    assert browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []

    board = pd.read_csv(report / "leaderboard.csv")
    for (ds, bb), g in board.groupby(["dataset", "backbone"]):
        key, variants = f"{ds}_{bb}", list(g["variant"])
        rows = lambda: [r.get_attribute("data-variant") for r in browser.find_elements(
            By.CSS_SELECTOR, f"#board-{key} tbody tr")]
        assert rows() == variants
        headers = browser.find_elements(By.CSS_SELECTOR, f"#board-{key} thead th")
        headers[0].click()                                          # method: a to z
        assert rows() == sorted(variants) != variants
        auc = next(h for h in headers if h.text.startswith("AUC"))
        auc.click()                                                 # numbers: the largest first
        by_auc = g.sort_values("auc_mean", ascending=False, kind="stable")["variant"].tolist()
        assert rows() == by_auc and auc.get_attribute("aria-sort") == "descending"
        auc.click()                                                 # again: the smallest first
        assert rows() == g.sort_values("auc_mean", kind="stable")["variant"].tolist()
        shown = lambda: {h.text.split("@")[-1] for h in headers if h.get_attribute("data-b") and h.is_displayed()}
        assert shown() == {"0.50"}
        Select(browser.find_element(By.CSS_SELECTOR, f"select[data-table=board-{key}]")).select_by_value("0.75")
        assert shown() == {"0.75"}                                  # the other figures at another budget

        figure = f"#fig-{key}"
        curves = browser.find_elements(By.CSS_SELECTOR, f"{figure} g.curves_marks path")
        methods = [re.search(r"method: ([^;]*);", c.get_attribute("aria-label")).group(1) for c in curves]
        assert sorted(methods) == sorted(variants)                  # one curve per method
        legends = [e.get_attribute("aria-label")
                   for e in browser.find_elements(By.CSS_SELECTOR, f"{figure} g.role-legend")]
        assert f"Symbol legend titled 'method' for fill color and stroke color with {len(variants)} values: " \
            f"{', '.join(variants)}" in legends
        points = browser.find_elements(By.CSS_SELECTOR, f"{figure} g.deployed_marks path")
        assert points
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", points[0])
        ActionChains(browser).move_to_element(points[0]).perform()
        tip = _wait(lambda: browser.execute_script(
            "const t = document.getElementById('vg-tooltip-element');"
            "return t && t.classList.contains('visible') ? t.innerText : '';"), "the tooltip")
        label = points[0].get_attribute("aria-label")
        method = re.search(r"method: ([^;]*);", label).group(1)
        assert method in variants and method in tip
        for field in ("setting", "test accuracy %", "± ", "test cost", "ECE %", "exit shares", "deployed at budgets"):
            assert field in tip, (field, tip)
        assert browser.save_screenshot(str(tmp_path / f"tooltip_{key}.png"))
    assert not [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
