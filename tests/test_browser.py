"""The search page in headless Chromium (Debian's chromium + chromedriver; Selenium Manager never downloads).

Serves a FakeRetriever over the sample photos shipped in scikit-image / scikit-learn (plus a stand-in "child" photo)
on a random loopback port, types queries, checks that thumbnails load, the min-score slider filters, the disclaimer
tile and banner appear and errors are shown. Writes screenshots to tests/artifacts/ (README's docs/screenshot.png comes from docs/screenshot.py on a real index).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from retrieval.config import DISCLAIMER, REPO_ROOT
from retrieval.server import background_server, create_app
from retrieval.server.fake import FakeItem, FakeRetriever

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
# (package, file, tags): what the fake "model" knows about each sample photo.
PHOTOS = [
    ("skimage", "chelsea.png", "cat tabby lying blanket pet playing"), ("skimage", "coffee.png", "coffee cup table mug"),
    ("skimage", "rocket.jpg", "rocket launching launch sky smoke"), ("skimage", "astronaut.png", "astronaut space suit"),
    ("skimage", "motorcycle_left.png", "red motorcycle bike"), ("skimage", "camera.png", "man holding camera"),
    ("skimage", "hubble_deep_field.jpg", "stars galaxies night sky space"), ("skimage", "horse.png", "horse"),
    ("skimage", "coins.png", "coins money"), ("skimage", "moon.png", "moon sky night"),
    ("skimage", "grass.png", "grass green lawn park"), ("skimage", "brick.png", "brick wall"),
    ("sklearn", "china.jpg", "old temple tree building"), ("sklearn", "flower.jpg", "pink flower"),
]


def photo_items(dest: Path) -> list[FakeItem]:
    import skimage
    import sklearn.datasets
    from PIL import Image

    roots = {"skimage": Path(skimage.__file__).parent / "data", "sklearn": Path(sklearn.datasets.__file__).parent / "images"}
    dest.mkdir(parents=True)
    items = []
    for pkg, name, tags in PHOTOS:
        if (roots[pkg] / name).is_file():
            shutil.copy2(roots[pkg] / name, dest / name)
            items.append(FakeItem(dest / name, frozenset(tags.split())))
    child = dest / "child_on_swing.png"  # stands for a photo of a child: must never be shown under strict
    Image.new("RGB", (320, 240), (230, 190, 160)).save(child)
    items.append(FakeItem(child, frozenset("park swing slide".split()), child_prob=0.95))
    return items


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory):
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's /usr/bin/chromium and /usr/bin/chromedriver (`make browser-deps` installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    app = create_app(FakeRetriever(photo_items(root / "photos")), "strict", thumb_dir=root / "thumbs")
    with background_server(app) as url:
        yield url


def wait(drv, condition, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, timeout).until(condition)


def search(drv, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = drv.find_element(By.ID, "q")
    box.clear()
    drv.execute_script("document.body.dataset.state = ''")
    box.send_keys(text, Keys.ENTER)
    wait(drv, lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error"))


def images_loaded(drv) -> bool:
    return drv.execute_script(
        "const imgs = [...document.querySelectorAll('#results img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);")


def screenshot(drv, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert drv.save_screenshot(str(path)) and path.stat().st_size > 10_000
    return path


def test_search_page_end_to_end(driver, base_url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    wait(driver, lambda d: "images indexed" in d.find_element(By.ID, "health").text)
    assert "policy strict" in driver.find_element(By.ID, "health").text

    # a plain query: thumbnails load, best match first, score badge and bar drawn
    search(driver, "a cat lying on a blanket")
    wait(driver, images_loaded)
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    assert len(cards) == 12
    first = cards[0]
    assert first.find_element(By.TAG_NAME, "img").get_attribute("alt") == "chelsea.png"
    assert float(first.find_element(By.CLASS_NAME, "badge").text) > 0.5
    assert "q=a+cat+lying" in driver.current_url

    # the min-score slider filters client-side, down to the empty-state message
    def set_slider(value: float) -> None:
        driver.execute_script("const s = document.getElementById('min-score'); s.value = arguments[0];"
                              "s.dispatchEvent(new Event('input'));", value)

    set_slider(0.5)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#results .card")) == 1
    set_slider(1.0)
    assert not driver.find_elements(By.CSS_SELECTOR, "#results .card")
    assert "Lower the minimum score" in driver.find_element(By.ID, "empty").text
    set_slider(0.0)

    # a query that ranks the stand-in child photo: its place holds the disclaimer tile, nothing of it is loaded
    search(driver, "a cat playing in the park")
    wait(driver, images_loaded)
    tiles = driver.find_elements(By.CSS_SELECTOR, "#results .card.is-withheld .withheld")
    assert [t.text for t in tiles] == [DISCLAIMER]
    sources = [i.get_attribute("src") for i in driver.find_elements(By.CSS_SELECTOR, "#results img")]
    assert len(sources) == 11 and all("/api/thumb/" in s for s in sources)
    assert "child_on_swing" not in driver.page_source
    screenshot(driver, "browser_results.png")

    # a child query: the banner replaces the results
    search(driver, "two little girls playing")
    banner = driver.find_element(By.ID, "banner")
    assert banner.is_displayed() and banner.text == DISCLAIMER
    assert not driver.find_elements(By.CSS_SELECTOR, "#results .card")
    screenshot(driver, "browser_restricted.png")

    # server-side validation errors are shown, not swallowed
    driver.execute_script("const k = document.getElementById('k'); k.add(new Option('500', '500')); k.value = '500';")
    search(driver, "a red motorcycle")
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed() and "k must be an integer in 1..100" in error.text
    assert not banner.is_displayed()


def test_operator_review_in_the_audit_page(driver, fake_env: Path, tmp_path: Path) -> None:
    """Audit page over a real index: the review queue loads, "no child here" / "shows a child" record a decision
    (stored in the index, shown on the card), and the strict page then follows it."""
    from selenium.webdriver.common.by import By

    from retrieval.policy.review import ReviewStore
    from retrieval.search import Retriever

    index = tmp_path / "idx"
    shutil.copytree(fake_env / "idx", index)
    retriever = Retriever.open(index, fake_env / "model")
    app = create_app(retriever, "audit", thumb_dir=tmp_path / "thumbs")
    with background_server(app) as url:
        driver.get(url + "/")
        wait(driver, lambda d: d.find_element(By.ID, "review-bar").is_displayed())
        driver.find_element(By.ID, "operator").send_keys("ana")
        driver.find_element(By.ID, "queue").click()
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card button.decide"))
        button = driver.find_elements(By.CSS_SELECTOR, "#results .card button.decide")[0]
        decision = button.get_attribute("data-decision")
        button.click()
        wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card .decided"))
        assert "(ana)" in driver.find_element(By.CSS_SELECTOR, "#results .card .decided").text
        screenshot(driver, "review_queue.png")
    got = list(ReviewStore(index).decisions().values())
    assert [(d.decision, d.operator) for d in got] == [(decision, "ana")]


def test_search_with_a_photo_then_more_like_this(driver, fake_env: Path, tmp_path: Path) -> None:
    """Pick a photo in the page: hits like it appear; "more like this" on a hit shows images like that one."""
    from selenium.webdriver.common.by import By

    from retrieval.search import Retriever

    retriever = Retriever.open(fake_env / "idx", fake_env / "model")
    retriever._detector_runtime = lambda: None  # the detector's networks are not what this test is about
    retriever._images_show_a_child = lambda *args, **kwargs: False
    app = create_app(retriever, "off", thumb_dir=tmp_path / "thumbs")
    photo = fake_env / "images" / retriever.store.meta["rel_path"].iloc[2]
    with background_server(app) as url:
        driver.get(url + "/")
        wait(driver, lambda d: d.find_element(By.ID, "photo"))
        wait(driver, lambda d: "policy off" in d.find_element(By.ID, "health").text)
        assert not driver.find_element(By.ID, "review-bar").is_displayed()  # review is for audit servers only
        driver.execute_script("document.body.dataset.state = ''")
        driver.find_element(By.ID, "photo").send_keys(str(photo))
        wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "done")
        names = [n.text for n in driver.find_elements(By.CSS_SELECTOR, "#results .card .name")]
        assert names and names[0].startswith(photo.name)
        driver.execute_script("document.body.dataset.state = ''")
        driver.find_elements(By.CSS_SELECTOR, "#results .card button.like")[0].click()
        wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "done")
        after = [n.text for n in driver.find_elements(By.CSS_SELECTOR, "#results .card .name")]
        assert after and not after[0].startswith(photo.name)  # more like this never returns the photo itself
        screenshot(driver, "search_by_photo.png")
        # a photo dropped on the page searches like a picked one
        driver.execute_script("document.body.dataset.state = ''")
        driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then((r) => r.blob()).then((blob) => {
              const dt = new DataTransfer();
              dt.items.add(new File([blob], "dropped.jpg", { type: "image/jpeg" }));
              document.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
              document.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
              done();
            });""", url + "/api/image/2")
        wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "done")
        dropped = [n.text for n in driver.find_elements(By.CSS_SELECTOR, "#results .card .name")]
        assert dropped and dropped[0].startswith(photo.name)
        # the folder field narrows every search: no photo of this library lives in a folder named "elsewhere"
        driver.find_element(By.ID, "under").send_keys("elsewhere")
        driver.execute_script("document.body.dataset.state = ''")
        driver.find_elements(By.CSS_SELECTOR, "#results .card button.like")[0].click()
        wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "done")
        assert not driver.find_elements(By.CSS_SELECTOR, "#results .card")
        assert "No images matched" in driver.find_element(By.ID, "empty").text
