"""``report.html`` in a real headless Chromium: no console errors, the headline equals
metrics.json, the hardest queries are those of brute force in AP order with right/wrong marks
that agree with the labels, the filter box filters, user strings stay text, and the page works
from a copied folder with no network."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import numpy as np
import pytest
from _browser import browser, console_errors
from _report_helpers import (
    FakeImageDataset,
    brute_force_queries,
    clustered_embeddings,
    make_config,
    make_history,
)

from rankedlist.evaluation import retrieval_metrics
from rankedlist.report import write_report

SCRIPT_NAME = "<script>alert(1)</script>"
IMG_NAME = '<img src=x onerror="window.__xss=1">'


def _synthetic_run(run_dir):
    x, y = clustered_embeddings(30, 8, dim=16, noise=1.0, seed=4)
    dataset = FakeImageDataset(y)
    dataset.classes[3], dataset.classes[4], dataset.classes[5] = SCRIPT_NAME, IMG_NAME, "字形"
    metrics = retrieval_metrics(x, y, ks=(1, 2, 4, 8))
    run_dir.mkdir()
    files = write_report(
        run_dir, config=make_config("folder"), history=make_history(),
        test_metrics={"fused": metrics}, protocol="default", embeddings=x, labels=y,
        dataset=dataset,
    )  # fmt: skip
    return files, x, y, dataset


def _edge_report(run_dir, labels):
    x = np.eye(len(labels), 4, dtype=np.float32)
    run_dir.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all queries lone: the evaluation warns, metrics NaN
        files = write_report(
            run_dir, config=make_config("folder"), history=[], test_metrics={"fused": {}},
            protocol="default", embeddings=x, labels=labels, dataset=FakeImageDataset(labels),
        )  # fmt: skip
    return files["html"]


def _headline(driver) -> dict[str, tuple[str, str]]:
    cells = driver.find_elements("css selector", "#headline-metrics td[data-metric]")
    return {c.get_attribute("data-metric"): (c.get_attribute("data-value"), c.text) for c in cells}


def check_headline(driver, metrics_json: dict) -> None:
    """Every number of metrics.json's ``test`` is in the page: the exact value and its percent."""
    shown = _headline(driver)
    assert set(shown) == set(metrics_json["test"])
    for key, value in metrics_json["test"].items():
        exact, text = shown[key]
        if isinstance(value, float):
            assert float(exact) == value and text == f"{100 * value:.1f}", key
        else:
            assert int(exact) == value and text == str(value), key


def check_self_contained(html: str) -> None:
    """No address outside the file: no CDN, no link, no network."""
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", html, re.I)
    assert "<link" not in html and "@import" not in html


# The hardest-query list as the page shows it, read in one round trip.
_READ_QUERIES = """
return [...document.querySelectorAll("li.query")].map((q) => ({
  row: Number(q.dataset.row), ap: Number(q.dataset.ap), first: Number(q.dataset.first),
  neighbors: [...q.querySelectorAll("figure.neighbor")].map((c) => ({
    row: Number(c.dataset.row), correct: c.dataset.correct === "1",
    mark: c.querySelector(".mark").textContent })) }));
"""


def _visible(driver, selector: str) -> int:
    script = "return [...document.querySelectorAll(arguments[0])].filter((e) => !e.hidden).length"
    return driver.execute_script(script, selector)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """One synthetic run's report for the tests of this file (the files are not modified)."""
    return _synthetic_run(tmp_path_factory.mktemp("html") / "run")


@pytest.mark.slow
def test_report_page_in_chromium(synthetic_run, tmp_path):
    files, x, y, dataset = synthetic_run
    shutil.copytree(files["html"].parent, tmp_path / "run")
    html = files["html"].read_text(encoding="utf-8")
    check_self_contained(html)
    assert SCRIPT_NAME not in html and IMG_NAME not in html  # escaped wherever they appear
    copy = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(tmp_path / "run", copy)  # thumbnails are embedded: the copy needs nothing
    shutil.rmtree(tmp_path / "run")
    brute = brute_force_queries(x, y)
    names = dataset.classes

    with browser() as driver:
        driver.get((copy / "report.html").as_uri())
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert console_errors(driver) == []
        check_headline(driver, json.loads((copy / "metrics.json").read_text()))
        images = driver.find_elements("css selector", "img")
        assert images and all(
            driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
            for i in images
        )

        queries = driver.execute_script(_READ_QUERIES)
        rows = [q["row"] for q in queries]
        aps = [q["ap"] for q in queries]
        assert len(rows) == 50 and aps == sorted(aps)
        assert aps == pytest.approx([brute[r][0] for r in rows], abs=1e-12)
        assert max(aps) <= min(v[0] for r, v in brute.items() if r not in rows) + 1e-12
        for query in queries:
            row = query["row"]
            assert query["first"] == brute[row][1] + 1
            shown = [n["row"] for n in query["neighbors"]]
            assert shown == brute[row][3][:8]  # the exact top 8, in order
            marks = [bool(y[r] == y[row]) for r in shown]
            assert [n["correct"] for n in query["neighbors"]] == marks
            assert [n["mark"] for n in query["neighbors"]] == ["✓" if m else "✗" for m in marks]

        # User strings are text: the class names show literally and run nothing.
        links = driver.find_elements("css selector", "#classes-body a.classlink")
        by_class = {int(a.get_attribute("data-cls")): a.get_attribute("textContent") for a in links}
        assert by_class[3] == SCRIPT_NAME and by_class[4] == IMG_NAME and by_class[5] == "字形"
        assert driver.execute_script("return window.__xss === undefined")

        # The filter box: only the queries and classes whose name holds the text stay.
        box = driver.find_element("id", "filter")
        box.send_keys("cls1")
        expected_queries = sum("cls1" in names[y[r]] for r in rows)
        assert _visible(driver, "li.query") == expected_queries > 0
        kept = driver.execute_script(
            "return [...document.querySelectorAll('#classes-body tr')]"
            ".filter((e) => !e.hidden).map((e) => e.dataset.name)"
        )
        assert sorted(kept) == sorted(n for n in names if "cls1" in n)
        box.clear()
        box.send_keys(" ")  # an input event with an empty filter: everything back
        assert _visible(driver, "li.query") == 50

        # Sorting the per-class table by Recall@1 (ascending first, as opened: worst first).
        read_r1 = (
            "return [...document.querySelectorAll('#classes-body tr')]"
            ".map((e) => Number(e.dataset.r1))"
        )
        values = driver.execute_script(read_r1)
        assert len(values) == 30 and values == sorted(values)
        driver.find_element("css selector", '#classes th button[data-key="2"]').click()
        assert driver.execute_script(read_r1) == sorted(values, reverse=True)
        assert console_errors(driver) == []

        # Edge splits: every query lone (nothing to list), and a gallery of one image.
        for name, labels in (("lone", [0, 1, 2]), ("pair", [0, 0])):
            page = _edge_report(tmp_path / name, np.array(labels))
            driver.get(page.as_uri())
            assert console_errors(driver) == [], name
            listed = driver.execute_script("return document.querySelectorAll('li.query').length")
            assert listed == (0 if name == "lone" else 2)
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_page_escapes_and_needs_no_network(synthetic_run):
    files, *_ = synthetic_run
    html = files["html"].read_text(encoding="utf-8")
    check_self_contained(html)
    assert SCRIPT_NAME not in html and IMG_NAME not in html
    # The data block holds the names with < and > as JSON escapes: never a closing tag.
    block = html.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    data = json.loads(block)
    assert data["names"]["3"] == SCRIPT_NAME and "<" not in block
    # The headline is plain HTML (readable without JavaScript).
    doc = json.loads(files["metrics"].read_text())
    for key, value in doc["test"].items():
        assert f'data-metric="{key}" data-value="{value!r}"' in html


def test_reports_describe_the_data_not_the_recipe(synthetic_run):
    """A folder run keeps no recipe sentence (the glyph demo's would follow it otherwise): the
    subtitle says what was trained and tested."""
    files, *_ = synthetic_run
    for key in ("html", "report"):
        text = files[key].read_text(encoding="utf-8")
        assert "synthetic test run" not in text  # make_config's description
        assert "RLL-H, bninception: 40 iterations on the image folder /nowhere; tested on 240 " \
            "test images." in text  # fmt: skip
