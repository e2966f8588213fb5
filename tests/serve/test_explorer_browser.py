"""The explorer page in a real headless Chromium (Playwright driving Debian's `chromium`, or a
browser `playwright install` fetched) against the server over a socket: a person types a user id
and sees the recommendations, clicks one to see its neighbours, and a bad id shows its error.
Skips where Playwright or a Chromium is missing (`apt-get install chromium` and
`pip install playwright` give both)."""

from __future__ import annotations

import shutil

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium: the system's, else Playwright's own; the module skips without one."""
    with playwright_api.sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
        except playwright_api.Error as err:
            pytest.skip(f"no Chromium to drive: {str(err).splitlines()[0]}")
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    """The explorer at GET /, loaded, with every console error and failed request recorded."""
    context = browser.new_context()
    opened = context.new_page()
    opened.problems = []
    opened.on("console", lambda m: m.type == "error" and opened.problems.append(m.text))
    opened.on("pageerror", lambda e: opened.problems.append(str(e)))
    opened.on("requestfailed", lambda r: opened.problems.append(f"{r.url}: {r.failure}"))
    opened.goto(server.url + "/")
    opened.wait_for_function("document.getElementById('user-ids').children.length > 0")
    yield opened
    context.close()


def texts(page, selector: str) -> list[str]:
    return page.locator(selector).all_inner_texts()


def test_typing_a_user_shows_the_recommendations_the_service_gives(page, recommender):
    user = recommender.bundle.users["user_id"][4]
    page.fill("#user-id", str(user))
    page.click("#user-form button[type=submit]")
    page.wait_for_selector("#user-result:not([hidden])")
    assert page.is_hidden("#user-error")
    assert texts(page, "#user-source .source") == ["model"]
    recs = recommender.recommend(user, 10, explain=True)
    rows = page.locator("#recs tr")
    assert rows.count() == 10
    for i, rec in enumerate(recs):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[0] == str(i + 1) and cells[2] == f"{rec.score:.4f}"
        assert cells[1].startswith(rec.title) and cells[1].endswith(str(rec.item_id))
        assert all(b.title in cells[3] for b in rec.because)  # the history items behind it
    history = [f"{h.title}{h.item_id}" for h in recommender.user_history(user)]
    assert [t.replace("\n", "") for t in texts(page, "#history li")] == history
    assert f"user={user}" in page.url  # the address says what the page shows
    assert page.problems == []


def test_clicking_a_recommendation_shows_its_nearest_items(page, recommender):
    user = recommender.bundle.users["user_id"][4]
    page.goto(f"{page.url.split('?')[0]}?user={user}")
    page.wait_for_selector("#user-result:not([hidden])")
    first = recommender.recommend(user, 10)[0]
    page.locator("#recs tr").first.locator("button.item").first.click()
    page.wait_for_selector("#item-result:not([hidden])")
    similar = recommender.similar_items(first.item_id, 10)
    shown = page.locator("#similar tr")
    assert shown.count() == len(similar)
    for i, item in enumerate(similar):
        assert shown.nth(i).locator("td").all_inner_texts()[1].startswith(item.title)
    assert page.input_value("#item-id") == str(first.item_id)
    assert page.problems == []


def test_an_unknown_user_shows_the_error_and_no_results(page):
    page.fill("#user-id", "ghost")
    page.click("#user-form button[type=submit]")
    page.wait_for_selector("#user-error:not([hidden])")
    assert page.is_hidden("#user-result")
    assert page.inner_text("#user-error") == (
        "unknown user id 'ghost': not one of the bundle's 200 users (field user_id)"
    )
    # The 404 is the page's answer, not a failure: the browser logs it, nothing else.
    assert all("404" in problem for problem in page.problems)
