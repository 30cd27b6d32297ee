"""The page in a real browser: Debian's headless Chromium, driven by selenium (nothing is
downloaded: the browser and its driver are the system's, or the test skips and says why)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import heic_of, shared_data, tiny_spec
from serving import abstaining_below, live_server
from synthetic import tiny_trained_world

from geoconcept_cli import GeoService, load_explainer
from geoconcept_cli.serving.http import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no Chromium here: apt-get install -y chromium chromium-driver (as root; .ci/run does)",
)
SCREENSHOT = os.environ.get("GEOCONCEPT_SCREENSHOT")  # where to keep the page's picture

# Of the heat points drawn away from every marker, the share whose pixel is coloured (the
# heat ramp), not the pale sea or the grey world; and how many pixels are coloured at all.
HEAT_DRAWN = """
const c = document.getElementById('map');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const warm = (x, y) => { const i = 4 * (Math.round(y) * c.width + Math.round(x));
  return Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60; };
const hits = window.geoconcept.hits(), marks = hits.filter(h => h.priority < 2);
const heat = hits.filter(h => h.priority === 2 && h.x > 0 && h.y > 0 && h.x < c.width
  && h.y < c.height && marks.every(m => Math.hypot(m.x - h.x, m.y - h.y) > 30));
let all = 0;
for (let y = 0; y < c.height; y++) for (let x = 0; x < c.width; x++) if (warm(x, y)) all++;
return [heat.length ? heat.filter(h => warm(h.x, h.y)).length / heat.length : 0, heat.length, all];
"""


@pytest.fixture(scope="module")
def explainer(tmp_path_factory):
    world = tiny_trained_world(tmp_path_factory.mktemp("browser"))
    with pytest.warns(UserWarning):  # random CLIP weights
        return load_explainer(tiny_spec(checkpoint=world["run"], gallery=world["gallery"]))


@pytest.fixture(scope="module")
def base_url(explainer):
    with live_server(create_app(GeoService(explainer))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def wait_for(browser, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda d: condition(d))


@pytest.mark.e2e
def test_page_locates_and_explains_an_uploaded_photo(browser, base_url, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    photo = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    browser.get(base_url + "/")
    wait_for(browser, lambda d: "concept-aware" in d.find_element(By.ID, "health").text)
    wait_for(browser, lambda d: int(d.find_element(By.ID, "map").get_attribute("data-drawn")) >= 2)
    assert browser.execute_script(HEAT_DRAWN)[2] == 0  # nothing warm before a photo

    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#candidates li"))
    canvas = browser.find_element(By.ID, "map")
    assert int(canvas.get_attribute("data-heat")) > 300  # the tiny gallery's distinct places
    assert canvas.get_attribute("data-markers") == "5"
    assert canvas.get_attribute("data-runner-up") == "1"
    share, away, _ = browser.execute_script(HEAT_DRAWN)
    assert away > 100 and share > 0.95

    places = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#candidates li")]
    assert len(places) == 5 and all(p.strip() for p in places)
    # what a newcomer missed: random weights said plainly, the bars' colours named, no
    # favicon request to answer 404
    warning = browser.find_element(By.ID, "warning")
    assert warning.is_displayed() and "random weights" in warning.text
    legend = browser.find_element(By.ID, "bar-legend")
    assert legend.is_displayed() and "natural" in legend.text and "human" in legend.text
    assert browser.execute_script("return document.querySelector('link[rel=icon]').href") \
        == "data:,"  # fmt: skip
    reasons = browser.find_element(By.ID, "reasons").text
    for heading in ("What the photo shows", "What the place is known for", "Why here",
                    "Rather than"):  # fmt: skip
        assert heading in reasons
    bars = browser.find_elements(By.CSS_SELECTOR, "#reasons .bar")
    assert len(bars) >= 8 and all(b.get_attribute("data-concept") for b in bars)
    assert "IF the photo shows" in reasons or "no concept shown" in reasons

    # hovering over the top candidate names it and gives its probability
    hit = browser.execute_script(
        "const c = document.getElementById('map'), r = c.getBoundingClientRect();"
        "const h = window.geoconcept.hits().find(h => h.label.startsWith('#1 '));"
        "return [h.x * r.width / c.width - r.width / 2, h.y * r.height / c.height - r.height / 2,"
        " h.label];"
    )
    ActionChains(browser).move_to_element_with_offset(canvas, hit[0], hit[1]).perform()
    tip = browser.find_element(By.ID, "tooltip")
    wait_for(browser, lambda d: tip.is_displayed(), timeout=10)
    assert tip.text.startswith("#1 ") and "p = " in tip.text and places[0].split(" ")[0] in tip.text

    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "serve.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    # a concept bar links to where that concept is found: the run's own concept axis
    concept = bars[0].get_attribute("data-concept")
    bars[0].click()
    wait_for(browser, lambda d: "concept axis" in d.find_element(By.ID, "status").text)
    assert concept in browser.find_element(By.ID, "where-text").get_attribute("value")
    assert int(canvas.get_attribute("data-heat")) > 300
    # the answer is about a text now: the photo and its reasons are gone, not left beside it
    assert not browser.find_element(By.ID, "preview").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, "#reasons .bar")
    browser.find_element(By.ID, "explain-btn").click()  # the photo again: shown again
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#reasons .bar"))
    assert browser.find_element(By.ID, "preview").is_displayed()


@pytest.mark.e2e
def test_page_merges_nearby_gallery_points_within_the_radius_asked(browser, base_url):
    """The page's "merge within" field goes with the question: the candidates say how many
    gallery points each holds, and the summary says what was merged; 0 lists points."""
    from selenium.webdriver.common.by import By

    photo = sorted(shared_data("im2gps3k", "images").iterdir())[1]
    browser.get(base_url + "/")
    wait_for(browser, lambda d: "concept-aware" in d.find_element(By.ID, "health").text)
    radius = browser.find_element(By.ID, "merge-km")
    assert radius.get_attribute("value") == "5"
    radius.clear()
    radius.send_keys("500")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#candidates li"))
    places = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#candidates li")]
    assert any("gallery points" in p for p in places)
    summary = browser.find_element(By.ID, "summary").text
    assert "gallery points within 500 km merged" in summary
    radius.clear()
    radius.send_keys("0")
    browser.find_element(By.ID, "explain-btn").click()
    wait_for(browser, lambda d: "merged" not in d.find_element(By.ID, "summary").text)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#candidates li"))
    places = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#candidates li")]
    assert len(places) == 5 and not any("gallery points" in p for p in places)


@pytest.mark.e2e
def test_page_limits_the_search_to_what_the_analyst_knows(browser, base_url):
    """The page's within / near / radius fields go with the question, and the answer says it
    kept to them; a limit the gazetteer cannot read is the server's one line."""
    from selenium.webdriver.common.by import By

    from geoconcept_cli.geo.regions import CONTINENT_OF

    photo = sorted(shared_data("im2gps3k", "images").iterdir())[2]
    browser.get(base_url + "/")
    wait_for(browser, lambda d: "concept-aware" in d.find_element(By.ID, "health").text)
    browser.find_element(By.ID, "within").send_keys("Europe; Bavaria")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait_for(browser, lambda d: "limited to" in d.find_element(By.ID, "summary").text)
    assert "Europe or DE: Bavaria" in browser.find_element(By.ID, "summary").text
    places = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#candidates li")]
    codes = [re.search(r", ([A-Z]{2}) -?[0-9]", li) for li in places]  # "Place, Region, CC 48.1"
    assert places and all(c and CONTINENT_OF.get(c[1]) == "Europe" for c in codes), places
    # hints go with the question; words the run's concepts do not cover are said, not used
    # (this run's concepts are planted directions, not CLIP's embeddings of their names)
    browser.find_element(By.ID, "hint").send_keys("concept 3; qwzx blorp")
    browser.find_element(By.ID, "explain-btn").click()
    wait_for(browser, lambda d: "hint “qwzx blorp”" in d.find_element(By.ID, "summary").text)
    summary = browser.find_element(By.ID, "summary").text
    assert re.search(r"hint “concept 3” \(maps onto concept \d+, .*\): maps onto no concept "
                     r"clearly, not applied", summary), summary  # fmt: skip
    browser.find_element(By.ID, "hint").clear()
    browser.find_element(By.ID, "within").clear()
    browser.find_element(By.ID, "within").send_keys("Atlantis")
    browser.find_element(By.ID, "explain-btn").click()
    status = browser.find_element(By.ID, "status")
    wait_for(browser, lambda d: "Atlantis" in status.text)
    assert "no country, continent or first-level region" in status.text


@pytest.mark.e2e
def test_page_locates_several_photos_of_one_place_together(browser, base_url):
    """Choosing several files asks one question of them all: the joint candidates, and each
    photo's part in the answer."""
    from selenium.webdriver.common.by import By

    chosen = sorted(shared_data("im2gps3k", "images").iterdir())[3:6]
    browser.get(base_url + "/")
    wait_for(browser, lambda d: "concept-aware" in d.find_element(By.ID, "health").text)
    browser.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in chosen))
    wait_for(browser, lambda d: "photos located together" in d.find_element(By.ID, "status").text)
    summary = browser.find_element(By.ID, "summary").text
    assert "the product of the 3 photos' distributions" in summary
    for photo in chosen:
        assert re.search(rf"{re.escape(photo.name)}: -?\d+% of the answer \(alone: ", summary)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#candidates li")) == 5


@pytest.mark.e2e
def test_page_explains_an_iphone_heic_photo(browser, base_url, tmp_path):
    """The server reads HEIC; Chromium cannot show it, so no broken picture stands beside it."""
    from selenium.webdriver.common.by import By

    photo = tmp_path / "IMG_0001.HEIC"
    photo.write_bytes(heic_of(sorted(shared_data("im2gps3k", "images").iterdir())[0], 6))
    browser.get(base_url + "/")
    wait_for(browser, lambda d: "concept-aware" in d.find_element(By.ID, "health").text)
    picker = browser.find_element(By.ID, "file")
    assert ".heic" in picker.get_attribute("accept").split(",")
    picker.send_keys(str(photo))
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#reasons .bar"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#candidates li")) == 5
    assert "IMG_0001.HEIC" in browser.find_element(By.ID, "status").text
    preview = browser.find_element(By.ID, "preview")
    drawn = "return arguments[0].naturalWidth > 0"
    wait_for(browser, lambda d: not preview.is_displayed() or d.execute_script(drawn, preview),
             timeout=10)  # fmt: skip


@pytest.mark.e2e
def test_page_shows_a_bad_upload_as_one_line(browser, base_url, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    browser.get(base_url + "/")
    wait_for(browser, lambda d: "concept-aware" in d.find_element(By.ID, "health").text)
    good = sorted(shared_data("im2gps3k", "images").iterdir())[0]
    browser.find_element(By.ID, "file").send_keys(str(good))  # an answer first...
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#candidates li"))
    browser.find_element(By.ID, "file").send_keys(str(bad))  # ...then a file that is no photo
    status = browser.find_element(By.ID, "status")
    wait_for(browser, lambda d: "error" in status.get_attribute("class"))
    assert status.text == "notes.jpg: not an image file PIL can read"
    # nothing of an earlier answer, nor the broken file, is left beside the error
    assert not browser.find_elements(By.CSS_SELECTOR, "#candidates li, #reasons .bar")
    assert not browser.find_element(By.ID, "preview").is_displayed()


@pytest.mark.e2e
def test_page_says_when_a_photo_is_not_localizable(browser, base_url, explainer):
    """Below the served model's abstention level the page says so first, and keeps the
    candidates as the best guess."""
    from selenium.webdriver.common.by import By

    photo = sorted(shared_data("im2gps3k", "images").iterdir())[1]
    with abstaining_below(explainer.predictor, 0.99):
        browser.get(base_url + "/")
        wait_for(browser, lambda d: "concept-aware" in d.find_element(By.ID, "health").text)
        browser.find_element(By.ID, "file").send_keys(str(photo))
        wait_for(browser, lambda d: "Not localizable" in d.find_element(By.ID, "summary").text)
        first = browser.find_element(By.CSS_SELECTOR, "#summary p")
        assert first.text.startswith("Not localizable at this confidence: ")
        assert "below 0.99. The candidates are the best guess." in first.text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#candidates li")) == 5
