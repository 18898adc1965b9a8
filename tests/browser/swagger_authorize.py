#!/usr/bin/env python3
"""Swagger UI's Authorize button, end to end, in headless Chromium against a running gateway.

Drives the gateway's own /docs page the way a person would (expand POST /search, "Try it out",
Execute, the Authorize dialog) and asserts on the response codes Swagger UI displays, and on the
credential headers the page really sent (read from Chromium's network log):

  1. /docs loads with every host but the gateway's unreachable, asks for nothing from another
     origin, and shows the Authorize button;
  2. POST /search without authorizing: 401 (kind "unauthorized"), no credential sent;
  3. the read-only key in the `api_key` scheme: POST /search 200 (sent as `api-key`), then
     POST /index 403 (kind "forbidden");
  4. Logout, the read-write key in the `bearer` scheme: POST /index 200 (sent as
     `Authorization: Bearer`, with no `api-key` left over from step 3);
  5. on the page loaded again (the read-write key in `bearer`), the example answer Swagger UI
     draws for /search shows `chunks` and `matches` as documents (not `["string"]`);
  6. a first-time user's path: "Try it out" and Execute on /index, then /search, without editing
     the body: the page sends the OpenAPI document's example, and the search answers 200 with
     matches;
  7. an executor's own Swagger UI (the first indexer's /docs, from /status) loads offline
     without the mesh token;
  8. with the mesh token authorized (`mesh_token` scheme), Try it out on its POST /{endpoint}
     with the offered path (`search`) and body answers 200.

    swagger_authorize.py GATEWAY_URL            # keys from the file named by $FLOWMESH_BROWSER_KEYS_FILE
    swagger_authorize.py --open GATEWAY_URL     # a gateway without keys: step 1 without the
                                                # Authorize button, a search gives 200, then
                                                # steps 5 to 7

The keys never come through argv: $FLOWMESH_BROWSER_KEYS_FILE names a file whose lines are
`read-write KEY`, `read-only KEY` and, for step 8, `mesh-token TOKEN` (the mesh's; without it
step 8 is left out). No key is printed; on a failure the program prints what the
page showed (keys replaced by ***) and saves a screenshot PNG (keys masked in the page first) under
$FLOWMESH_BROWSER_ARTIFACTS (default target/browser).

Environment: CHROMIUM (default /usr/bin/chromium), CHROMEDRIVER (default /usr/bin/chromedriver),
FLOWMESH_BROWSER_TIMEOUT (seconds for each wait, default 30).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import (
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

SEARCH_BODY = '{"data": [{"text": "hello"}]}'
INDEX_BODY = '{"data": [{"id": "swagger-ui-check", "text": "hello from the swagger ui check"}]}'


class CheckFailed(Exception):
    """A step's expectation did not hold; the message says what the page showed."""


class Page:
    """The gateway's Swagger UI in one headless Chromium."""

    def __init__(self, gateway: str, secrets: list[str], artifacts: Path, timeout: float):
        self.gateway = gateway.rstrip("/")
        # The service whose page is open: the gateway, then an executor (see `switch_to`).
        self.base = self.gateway
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.gateway))
        self.secrets = [s for s in secrets if s]
        self.artifacts = artifacts
        self.timeout = timeout
        self.step = "start"
        self.profile = tempfile.TemporaryDirectory(prefix="flowmesh-chromium-")
        self.driver = self._start_chromium()

    def _start_chromium(self) -> webdriver.Chrome:
        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        host = urlsplit(self.gateway).hostname or "127.0.0.1"
        for arg in (
            "--headless=new",
            "--no-sandbox",  # root in a container has no user namespace for the sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,2400",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={self.profile.name}",
            # Offline: every host name but the gateway's fails to resolve, so a page that needs
            # a CDN (fonts, the validator badge, a script) shows it here, not in production.
            f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
        ):
            options.add_argument(arg)
        # The page's network events (with request headers) and its console, read after each step.
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(self.timeout)
        driver.set_script_timeout(self.timeout)
        return driver

    # ---- helpers -------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def wait(self, what: str, condition, timeout: float | None = None):
        """Waits (bounded) until `condition(driver)` is truthy and returns it."""
        waiter = WebDriverWait(
            self.driver,
            timeout or self.timeout,
            poll_frequency=0.1,
            ignored_exceptions=(StaleElementReferenceException, ValueError),
        )
        try:
            return waiter.until(condition)
        except TimeoutException as e:
            raise CheckFailed(f"timed out after {timeout or self.timeout:.0f} s waiting for {what}") from e

    def click(self, element: WebElement) -> None:
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()

    def find(self, root, css: str) -> WebElement | None:
        found = root.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def drain_network(self) -> list[dict]:
        """The requests made by the gateway's pages since the last call: `{url, method, headers}`
        each (Chromium's own pages, such as the first tab's, are left out)."""
        sent = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"]).get("message", {})
            params = message.get("params", {})
            if message.get("method") != "Network.requestWillBeSent" or not params.get(
                "documentURL", ""
            ).startswith(self.origin + "/"):
                continue
            request = params.get("request", {})
            headers = {k.lower(): v for k, v in request.get("headers", {}).items()}
            sent.append(
                {
                    "url": request.get("url", ""),
                    "method": request.get("method", ""),
                    "headers": headers,
                    "body": request.get("postData"),
                }
            )
        return sent

    # ---- the page ------------------------------------------------------------------------

    def switch_to(self, base: str) -> None:
        """Makes `base` (another service on the gateway's host) the service whose page is open."""
        self.base = base.rstrip("/")
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.base))

    def open_docs(
        self, expect_authorize: bool, title_text: str = "flowmesh gateway", first: str = "/search"
    ) -> None:
        self.drain_network()
        self.driver.get_log("browser")  # earlier steps' expected 401s and 403s are not this page's
        self.driver.get(self.base + "/docs/")
        self.wait(f"Swagger UI to render the operations of {title_text}", lambda d: self.operation(first))
        title = self.find(self.driver, ".swagger-ui .info .title")
        if title is None or title_text not in title.text:
            shown = title.text if title is not None else "missing"
            raise CheckFailed(f"the page's title is {shown!r}, not {title_text!r}")
        if expect_authorize:
            self.wait("the Authorize button", lambda d: self.find(d, ".auth-wrapper button.authorize"))
        # Let late loads (images, a validator badge) start before the network log is read.
        time.sleep(1.0)
        requests = self.drain_network()
        if not any(r["url"] == self.origin + "/openapi.json" for r in requests):
            # The network log is what the offline and header checks read: it must see the page.
            raise CheckFailed("Chromium's network log does not show the page fetching /openapi.json")
        foreign = [
            r["url"]
            for r in requests
            if not (r["url"].startswith(self.origin + "/") or r["url"].startswith(("data:", "blob:")))
        ]
        if foreign:
            raise CheckFailed("/docs asked for resources from other origins: " + ", ".join(foreign))
        print(f"  {self.base}/docs loaded offline: {len(requests)} requests, all to its service")
        errors = [e["message"] for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]
        if errors:
            raise CheckFailed("the browser console has errors: " + "; ".join(errors))

    def operation(self, path: str, method: str = "post") -> WebElement | None:
        for block in self.driver.find_elements(By.CSS_SELECTOR, f".opblock.opblock-{method}"):
            summary = self.find(block, ".opblock-summary-path")
            if summary is not None and summary.get_attribute("data-path") == path:
                return block
        return None

    def expand(self, path: str) -> WebElement:
        """Expands POST `path` (once) and returns its block."""
        block = self.wait(f"the POST {path} operation", lambda d: self.operation(path))
        if "is-open" not in (block.get_attribute("class") or ""):
            self.click(self.find(block, ".opblock-summary-control") or self.find(block, ".opblock-summary"))
            self.wait(f"POST {path} to expand", lambda d: self.find(block, ".opblock-body"))
        return block

    def try_it_out(self, path: str, body: str | None) -> WebElement:
        """Expands POST `path`, switches it to "Try it out" (once) and puts `body` in its editor
        (None: leaves the body Swagger UI put there, as a first-time user does)."""
        block = self.expand(path)
        if self.find(block, "textarea.body-param__text") is None:
            try_out = self.wait('the "Try it out" button', lambda d: self.find(block, "button.try-out__btn"))
            self.click(try_out)
        editor = self.wait("the request body editor", lambda d: self.find(block, "textarea.body-param__text"))
        if body is None:
            return block
        # Set as an edit would (the value, then an `input` event React listens to): typing it key
        # by key costs seconds per body on a busy machine. The request's body is checked as sent.
        self.driver.execute_script(
            """
            const [editor, body] = arguments;
            Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set.call(editor, body);
            editor.dispatchEvent(new Event('input', {bubbles: true}));
            """,
            editor,
            body,
        )
        self.wait(
            "the body editor to hold the body",
            lambda d: json.loads(editor.get_attribute("value") or "null") == json.loads(body),
            timeout=5,
        )
        return block

    def execute(self, path: str, body: str | None, url: str | None = None) -> tuple[int, str, dict]:
        """Executes POST `path` with `body` (None: the body Swagger UI offers); returns the status
        and body Swagger UI shows, and the request the page sent for it, to `url` (default the
        service's `path`: give it for a path with parameters)."""
        block = self.try_it_out(path, body)
        if body is None:
            editor = self.find(block, "textarea.body-param__text")
            body = editor.get_attribute("value") if editor is not None else ""
            try:
                json.loads(body)
            except ValueError as e:
                raise CheckFailed(f"the body Swagger UI offers for POST {path} is not JSON: {body!r}") from e
        url = url or self.base + path
        clear = self.find(block, "button.btn-clear")
        if clear is not None:
            self.click(clear)
            self.wait(
                "the previous response to clear",
                lambda d: not self.find(block, ".live-responses-table"),
            )
        self.drain_network()
        self.click(self.find(block, "button.execute"))
        cell = self.wait(
            f"Swagger UI to show the response of POST {path}",
            lambda d: self.find(block, ".live-responses-table tbody .response-col_status"),
        )
        shown = cell.text.strip()
        match = re.match(r"\d{3}", shown)
        if match is None:
            raise CheckFailed(f"the response code shown for POST {path} is {self.redact(shown)!r}")
        details = self.find(block, ".live-responses-table tbody .response-col_description")
        sent = [r for r in self.drain_network() if r["method"] == "POST" and r["url"] == url]
        if len(sent) != 1:
            raise CheckFailed(f"expected the page to send one POST {path}, it sent {len(sent)}")
        try:
            sent_body = json.loads(sent[0]["body"] or "null")
        except ValueError:
            sent_body = None
        if sent_body != json.loads(body):
            raise CheckFailed(f"the page sent POST {path} with the body {sent[0]['body']!r}, not {body!r}")
        return int(match.group()), details.text if details is not None else "", sent[0]

    def response_json(self, path: str) -> dict:
        """The JSON body of the last response Swagger UI shows under POST `path`."""
        block = self.expand(path)
        for pre in block.find_elements(By.CSS_SELECTOR, ".live-responses-table pre"):
            try:
                value = json.loads(pre.text)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        raise CheckFailed(f"Swagger UI shows no JSON response body under POST {path}")

    def documented_example(self, path: str, code: str = "200") -> dict:
        """The example Swagger UI draws for the `code` answer of POST `path` (its Example Value)."""
        block = self.expand(path)
        css = f'.responses-table:not(.live-responses-table) tr.response[data-code="{code}"] pre'
        for pre in block.find_elements(By.CSS_SELECTOR, css):
            try:
                value = json.loads(pre.text)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        raise CheckFailed(f"Swagger UI draws no JSON example for the {code} answer of POST {path}")

    def open_authorize(self) -> WebElement:
        modal = self.find(self.driver, ".modal-ux")
        if modal is None:
            button = self.wait("the Authorize button", lambda d: self.find(d, ".auth-wrapper button.authorize"))
            self.click(button)
            modal = self.wait("the authorization dialog", lambda d: self.find(d, ".modal-ux"))
        return modal

    def scheme(self, modal: WebElement, name: str) -> WebElement:
        def container(_):
            for c in modal.find_elements(By.CSS_SELECTOR, ".auth-container"):
                heading = self.find(c, "h4")
                if heading is not None and re.match(rf"{re.escape(name)}\b", heading.text.strip()):
                    return c
            return None

        return self.wait(f"the {name!r} scheme in the authorization dialog", container)

    def authorize(self, name: str, key: str) -> None:
        modal = self.open_authorize()
        box = self.scheme(modal, name)
        field = self.wait(f"the {name!r} key field", lambda d: self.find(box, "input"))
        self.click(field)
        field.send_keys(key)
        self.click(self.find(box, "button.authorize"))
        self.wait(f"{name!r} to show as authorized (its Logout button)", lambda d: self.logout_button(box))
        self.close_authorize(modal)

    def logout(self, name: str) -> None:
        modal = self.open_authorize()
        box = self.scheme(modal, name)
        button = self.wait(f"the Logout button of {name!r}", lambda d: self.logout_button(box))
        self.click(button)
        self.wait(f"{name!r} to show as not authorized", lambda d: self.find(box, "input") is not None)
        self.close_authorize(modal)

    def logout_button(self, box: WebElement) -> WebElement | None:
        for button in box.find_elements(By.CSS_SELECTOR, ".auth-btn-wrapper button"):
            if button.text.strip() == "Logout":
                return button
        return None

    def close_authorize(self, modal: WebElement) -> None:
        self.click(self.find(modal, "button.btn-done"))
        self.wait("the authorization dialog to close", lambda d: self.find(d, ".modal-ux") is None)

    # ---- on failure -------------------------------------------------------------------------

    def report_failure(self, error: Exception) -> None:
        print(f"swagger-ui check FAILED at step {self.step}: {self.redact(str(error))}", file=sys.stderr)
        try:
            text = self.driver.find_element(By.TAG_NAME, "body").text
            print("---- what the page showed (keys replaced by ***) ----", file=sys.stderr)
            print(self.redact(text)[-6000:], file=sys.stderr)
            for entry in self.driver.get_log("browser"):
                print("console: " + self.redact(entry.get("message", "")), file=sys.stderr)
        except WebDriverException as e:
            print(f"(could not read the page: {e.msg})", file=sys.stderr)
        try:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            self.mask_secrets_in_page()
            shot = self.artifacts / f"swagger-ui-failure-{time.strftime('%Y%m%d-%H%M%S')}.png"
            if self.driver.save_screenshot(str(shot)):
                print(f"screenshot: {shot}", file=sys.stderr)
        except (OSError, WebDriverException) as e:
            print(f"(no screenshot: {e})", file=sys.stderr)

    def mask_secrets_in_page(self) -> None:
        """Replaces every key in the page's text and fields by *** before a screenshot is taken."""
        self.driver.execute_script(
            """
            const secrets = arguments[0];
            const mask = (s) => secrets.reduce((t, k) => t.split(k).join('***'), s);
            const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            for (let n = walker.nextNode(); n; n = walker.nextNode()) n.nodeValue = mask(n.nodeValue);
            for (const f of document.querySelectorAll('input, textarea')) f.value = mask(f.value);
            """,
            self.secrets,
        )

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            self.profile.cleanup()


def expect(page: Page, path: str, body: str, code: int, kind: str | None = None) -> dict:
    """Executes POST `path` and checks the code Swagger UI shows (and the error kind it shows)."""
    shown, details, sent = page.execute(path, body)
    if shown != code:
        raise CheckFailed(f"POST {path} shows {shown}, expected {code}; details: {page.redact(details)[:600]}")
    if kind is not None and not re.search(rf'"kind":\s*"{kind}"', details):
        raise CheckFailed(
            f'POST {path} shows {shown} without "kind": "{kind}"; details: {page.redact(details)[:600]}'
        )
    print(f"  POST {path}: Swagger UI shows {shown}")
    return sent["headers"]


def fetch_json(url: str, key: str | None = None, timeout: float = 10) -> dict:
    headers = {"api-key": key} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as answer:
        return json.load(answer)


def spec_example(page: Page, path: str) -> object:
    """The example request body of POST `path` in the open service's /openapi.json."""
    spec = fetch_json(page.base + "/openapi.json")
    try:
        return spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
    except KeyError as e:
        raise CheckFailed(f"the OpenAPI document has no example body for POST {path}") from e


def try_default(page: Page, path: str, url: str | None = None) -> dict:
    """Try it out on POST `path` without touching the body: the body offered must be the
    document's example, and the answer a 200. Returns the answer's JSON."""
    expected = spec_example(page, path)
    shown, details, sent = page.execute(path, None, url)
    if json.loads(sent["body"] or "null") != expected:
        raise CheckFailed(f"Swagger UI offered {sent['body']!r} for POST {path}, not the documented example")
    if shown != 200:
        raise CheckFailed(f"POST {path} with the offered body shows {shown}; details: {page.redact(details)[:600]}")
    print(f"  POST {path} with the body Swagger UI offers: 200")
    return page.response_json(path)


def run_defaults(page: Page, key: str | None) -> None:
    """A first-time user: "Try it out" and Execute on /index, then on /search, editing nothing,
    on a freshly loaded page (authorized with the read-write key `key`, if any)."""
    page.step = "5: the drawn examples are documents"
    page.open_docs(expect_authorize=key is not None)
    if key is not None:
        page.authorize("bearer", key)
    example = page.documented_example("/search")
    drawn = example.get("data", [{}])[0]
    for field in ("chunks", "matches"):
        values = drawn.get(field)
        if not (isinstance(values, list) and values and all(isinstance(d, dict) for d in values)):
            raise CheckFailed(f"the example answer of /search draws {field} as {values!r}, not documents")
    print("  the example answer of /search draws chunks and matches as documents")

    page.step = "6: index and search with the bodies Swagger UI offers"
    try_default(page, "/index")
    answer = try_default(page, "/search")
    matches = answer.get("data", [{}])[0].get("matches") or []
    if not matches or not all(isinstance(m, dict) and m.get("id") for m in matches):
        raise CheckFailed(f"the search with the offered body has no matches: {page.redact(json.dumps(answer))[:600]}")
    print(f"  the search found {len(matches)} matches, the first {matches[0]['id']!r}")


def indexer_address(page: Page, key: str | None) -> str:
    """The address of the Flow's first indexer replica, from the gateway's /status."""
    status = fetch_json(page.gateway + "/status", key)
    for executor in status.get("executors", []):
        if executor.get("uses") == "indexer" and executor.get("shards"):
            return executor["shards"][0][0]["address"]
    raise CheckFailed("the gateway's /status lists no indexer")


def run_executor(page: Page, key: str | None, mesh_token: str | None) -> None:
    """An executor's own Swagger UI: it loads without the mesh token; with the token authorized,
    Try it out on its endpoint route with the offered path and body answers 200."""
    page.step = "7: an executor's /docs"
    page.switch_to(indexer_address(page, key))
    page.open_docs(expect_authorize=True, title_text="flowmesh indexer", first="/{endpoint}")
    if mesh_token is None:
        return
    page.step = "8: Try it out on the executor with the mesh token"
    page.authorize("mesh_token", mesh_token)
    answer = try_default(page, "/{endpoint}", page.base + "/search")
    if not isinstance(answer.get("data"), list) or not answer["data"]:
        raise CheckFailed(f"the executor's answer has no data: {json.dumps(answer)[:600]}")


def run_with_keys(page: Page, read_write: str, read_only: str, mesh_token: str | None) -> None:
    page.step = "1: load /docs offline"
    page.open_docs(expect_authorize=True)
    print("  the Authorize button is shown")

    page.step = "2: search without authorizing"
    headers = expect(page, "/search", SEARCH_BODY, 401, "unauthorized")
    if "api-key" in headers or "authorization" in headers:
        raise CheckFailed("the page sent a credential before anything was authorized")

    page.step = "3: read-only key in api_key"
    page.authorize("api_key", read_only)
    headers = expect(page, "/search", SEARCH_BODY, 200)
    if headers.get("api-key") != read_only:
        raise CheckFailed("the search did not carry the read-only key in the api-key header")
    headers = expect(page, "/index", INDEX_BODY, 403, "forbidden")
    if headers.get("api-key") != read_only:
        raise CheckFailed("the index call did not carry the read-only key in the api-key header")

    page.step = "4: logout, read-write key in bearer"
    page.logout("api_key")
    page.authorize("bearer", read_write)
    headers = expect(page, "/index", INDEX_BODY, 200)
    if headers.get("authorization") != f"Bearer {read_write}":
        raise CheckFailed("the index call did not carry the read-write key as Authorization: Bearer")
    if "api-key" in headers:
        raise CheckFailed("the api-key header was still sent after Logout")

    run_defaults(page, read_write)
    run_executor(page, read_write, mesh_token)


def run_open(page: Page) -> None:
    page.step = "1: load /docs offline"
    page.open_docs(expect_authorize=False)
    page.step = "search on a gateway without keys"
    expect(page, "/search", SEARCH_BODY, 200)
    run_defaults(page, None)
    run_executor(page, None, None)


def read_keys(path: str) -> tuple[str, str, str | None]:
    keys = {}
    for line in Path(path).read_text().splitlines():
        name, _, value = line.strip().partition(" ")
        if name in ("read-write", "read-only", "mesh-token") and value.strip():
            keys[name] = value.strip()
    missing = {"read-write", "read-only"} - keys.keys()
    if missing:
        raise SystemExit(f"{path}: no {' and no '.join(sorted(missing))} line")
    return keys["read-write"], keys["read-only"], keys.get("mesh-token")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gateway", help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument(
        "--open", action="store_true", help="the gateway has no keys: check the page and a 200 search"
    )
    args = parser.parse_args()

    secrets: list[str] = []
    if not args.open:
        keys_file = os.environ.get("FLOWMESH_BROWSER_KEYS_FILE")
        if not keys_file:
            parser.error("set FLOWMESH_BROWSER_KEYS_FILE (or pass --open for a gateway without keys)")
        read_write, read_only, mesh_token = read_keys(keys_file)
        secrets = [read_write, read_only, mesh_token or ""]
    artifacts = Path(os.environ.get("FLOWMESH_BROWSER_ARTIFACTS", "target/browser"))
    timeout = float(os.environ.get("FLOWMESH_BROWSER_TIMEOUT", "30"))

    started = time.monotonic()
    page = Page(args.gateway, secrets, artifacts, timeout)
    try:
        if args.open:
            run_open(page)
        else:
            run_with_keys(page, read_write, read_only, mesh_token)
    except (CheckFailed, WebDriverException) as e:
        page.report_failure(e)
        return 1
    finally:
        page.close()
    print(f"swagger-ui check passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
