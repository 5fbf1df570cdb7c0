"""The try-it page at / in a real browser: Debian's chromium, headless, driven by Selenium
through Debian's chromedriver (the Makefile installs both), on a phone-sized window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.wait import WebDriverWait

from handai.registry import MANIFEST_FILE, MODEL_FILE
from tests.browser import headless_chromium
from tests.conftest import API_KEY, ROOT, Service
from tests.images import HWD, number_png, phone_photo

SHOTS = ROOT / "artifacts" / "page"


@pytest.fixture(scope="module", autouse=True)
def shipped_model(service: Service) -> Iterator[None]:
    """The page reads with the shipped model (the session's registry holds random ones),
    installed and activated as an operator would; the one live before comes back after."""
    seed = sorted(p for p in (ROOT / "seed").iterdir() if (p / MODEL_FILE).is_file())[-1]
    with service.client(timeout=300) as c:
        before = c.get("/v1/models/active").json()["model_id"]
        installed = c.post(
            "/v1/admin/models/upload",
            files={
                "manifest": ("manifest.json", (seed / MANIFEST_FILE).read_bytes()),
                "model": ("model.pt", (seed / MODEL_FILE).read_bytes()),
            },
            data={"model_id": seed.name, "activate": "true"},
        )
        if installed.status_code != 200:  # already registered by an earlier module
            assert "already registered" in installed.text, installed.text
            activated = c.post("/v1/admin/models/activate", json={"model_id": seed.name})
            assert activated.status_code == 200, activated.text
    yield
    with service.client(timeout=300) as c:
        c.post("/v1/admin/models/activate", json={"model_id": before})


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    # A phone's screen (a desktop window cannot be made this narrow).
    session = headless_chromium(mobile={"width": 390, "height": 1100, "pixelRatio": 2})
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield session
    finally:
        session.quit()


def wait_text(browser: WebDriver, element_id: str) -> str:
    WebDriverWait(browser, 60).until(
        lambda b: (
            b.find_element(By.ID, element_id).text.strip()
            or b.find_element(By.ID, "error").text.strip()
        )
    )
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text
    return str(browser.find_element(By.ID, element_id).text.strip())


def upload(browser: WebDriver, path: Path) -> None:
    field = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].style.display = 'block'", field)
    field.send_keys(str(path))


def test_a_digit_drawn_with_the_mouse_is_read(browser: WebDriver, service: Service) -> None:
    browser.get(f"{service.url}/")
    canvas = browser.find_element(By.ID, "canvas")
    w, h = canvas.size["width"], canvas.size["height"]
    assert w <= 390  # fits a phone's screen
    # A 7: the top bar left to right, then the stem down and to the left.
    stroke = ActionChains(browser)
    stroke.move_to_element_with_offset(canvas, int(-0.28 * w), int(-0.3 * h)).click_and_hold()
    for _ in range(10):
        stroke.move_by_offset(int(0.056 * w), 0)
    for _ in range(12):
        stroke.move_by_offset(int(-0.022 * w), int(0.054 * h))
    stroke.release().perform()
    browser.find_element(By.ID, "read").click()
    assert wait_text(browser, "answer") == "7"
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert len(bars) == 10
    assert browser.find_element(By.ID, "top3").text.startswith("7 (")
    preview = browser.find_element(By.ID, "preview").get_attribute("src") or ""
    assert preview.startswith("data:image/png;base64,")  # the 28x28 the model saw
    browser.save_screenshot(str(SHOTS / "drawn-digit.png"))


def test_an_uploaded_photo_is_read(browser: WebDriver, service: Service) -> None:
    browser.get(f"{service.url}/")
    upload(browser, sorted(HWD.glob("3-*.png"))[5])
    assert wait_text(browser, "answer") == "3"
    assert "confidence" in browser.find_element(By.ID, "confidence").text


def test_a_phone_camera_photo_is_scaled_to_the_limits_upright_and_read(
    browser: WebDriver, service: Service, tmp_path: Path
) -> None:
    """A phone's camera gives a photo of millions of pixels, stored sideways with an EXIF
    rotation: the service refuses it as it is (1024 px a side as shipped), so the page sends
    it scaled down and upright."""
    image = phone_photo(tmp_path / "IMG_0001.jpg")
    with service.client() as c:
        as_is = c.post("/v1/read", files={"file": (image.name, image.read_bytes(), "image/jpeg")})
        assert as_is.status_code == 413 and as_is.json()["code"] == "too_large"
    browser.get(f"{service.url}/")
    upload(browser, image)
    assert wait_text(browser, "answer") == "7"


def test_a_whole_number_is_read(browser: WebDriver, service: Service, tmp_path: Path) -> None:
    browser.get(f"{service.url}/")
    browser.find_element(By.ID, "mode-number").click()
    assert browser.find_element(By.ID, "canvas").get_attribute("width") == "560"
    image = tmp_path / "number.png"
    image.write_bytes(number_png("4096"))
    upload(browser, image)
    assert wait_text(browser, "number") == "4096"
    rows = browser.find_elements(By.CSS_SELECTOR, "#number-digits tr")
    assert len(rows) == 4
    browser.save_screenshot(str(SHOTS / "number.png"))


def test_the_key_field_reaches_a_service_that_wants_one(
    browser: WebDriver, service: Service
) -> None:
    browser.get(f"{service.secure_url}/")
    upload(browser, sorted(HWD.glob("3-*.png"))[5])
    WebDriverWait(browser, 60).until(ready.visibility_of_element_located((By.ID, "error")))
    assert "unauthorized" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "api-key").send_keys(API_KEY)
    upload(browser, sorted(HWD.glob("3-*.png"))[5])
    # That app serves its own registry's model: any digit is an answer.
    WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "answer").text.strip())
    assert browser.find_element(By.ID, "answer").text.strip().isdigit()
    assert not browser.find_element(By.ID, "error").is_displayed()
