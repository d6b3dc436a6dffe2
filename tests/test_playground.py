"""The playground page (GET /) in a real browser: Debian's headless Chromium, driven by Playwright."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
httpx = pytest.importorskip("httpx")

from gpt2 import GPT, GPTConfig  # noqa: E402
from gpt2.serve.app import create_app  # noqa: E402
from gpt2.serve.server import BackgroundServer  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Slow(GPT):
    """A tiny model at 25 ms a step: slow enough that Stop lands mid-stream, as it would on a real model."""

    def hidden_states(self, idx, *args, **kw):
        time.sleep(0.025)
        return super().hidden_states(idx, *args, **kw)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_the_playground_streams_colours_tokens_and_stops(tmp_path: Path, gpt2_tokenizer) -> None:
    torch.manual_seed(0)
    model = Slow(GPTConfig(vocab_size=50257, n_positions=512, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # sharper logits than random weights give, so that the colours vary as a trained model's do
        model.transformer.ln_f.weight *= 40
    app = create_app(model, gpt2_tokenizer, "gpt2-tiny-random")
    with BackgroundServer(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.set_default_timeout(20_000)
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('gpt2-tiny-random')")
            page.fill("#prompt", "The meaning of life is")
            page.eval_on_selector("#max_tokens", "el => { el.value = '400'; el.dispatchEvent(new Event('input')); }")
            page.fill("#seed", "3")
            assert page.inner_text("#max_tokens_v") == "400"
            page.click("#generate")
            page.wait_for_function("document.querySelectorAll('#output .tok').length >= 8")
            assert page.is_enabled("#stop") and not page.is_enabled("#generate")
            output = page.inner_text("#output")
            assert output.startswith("The meaning of life is") and len(output) > len("The meaning of life is")
            # each token coloured by its probability; hovering one shows the alternatives
            backgrounds = page.eval_on_selector_all("#output .tok", "els => els.map(e => e.style.background)")
            assert all(b.startswith("hsla") or b.startswith("rgba") for b in backgrounds), backgrounds
            page.hover("#output .tok >> nth=2")
            page.wait_for_selector("#tip", state="visible")
            assert len(page.query_selector_all("#tip tr")) >= 5
            page.click("#stop")
            page.wait_for_function("!document.getElementById('generate').disabled")
            assert "stopped" in page.inner_text("#stats")
            count = len(page.query_selector_all("#output .tok"))
            assert count < 400
            deadline = time.monotonic() + 5  # the aborted stream frees its slot on the server
            while httpx.get(f"{url}/health", timeout=5).json()["active"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert httpx.get(f"{url}/health", timeout=5).json()["active"] == 0
            page.wait_for_timeout(300)
            assert len(page.query_selector_all("#output .tok")) == count  # nothing more arrives after Stop
            page.hover("#output .tok >> nth=5")
            page.wait_for_selector("#tip", state="visible")
            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot))
            shutil.copy(shot, "/tmp/playground.png")
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def _fast_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, n_positions=256, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_errors_show_in_view_and_speeds_are_measured_not_guessed(gpt2_tokenizer) -> None:
    app = create_app(_fast_model(), gpt2_tokenizer, "tiny")
    with BackgroundServer(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 700})
            page.set_default_timeout(20_000)
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
            # a fast model: the whole completion reaches the browser in a few reads, too close together to time
            page.fill("#prompt", "Hello")
            page.eval_on_selector("#max_tokens", "el => { el.value = '8'; el.dispatchEvent(new Event('input')); }")
            page.fill("#seed", "1")
            page.click("#generate")
            page.wait_for_function("!document.getElementById('generate').disabled && "
                                   "document.querySelectorAll('#output .tok').length > 0")  # fmt: skip
            stats = page.inner_text("#stats")
            assert "tokens" in stats, stats
            if "tok/s" in stats:  # a rate only where the page measured one: at least a quarter of a second of tokens
                first = re.search(r"first token ([\d,]+) ms", stats)
                total = re.search(r"([\d,]+) ms in all", stats)
                assert first and total, f"a rate without the times it was measured between: {stats}"
                assert float(total[1].replace(",", "")) - float(first[1].replace(",", "")) >= 250, stats
            # a long prompt: the output grows below the fold, and the 400 it gets must still be in view
            page.fill("#prompt", "word " * 400)
            page.click("#generate")
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            error = page.locator("#error")
            assert "context length" in error.inner_text()
            box = error.bounding_box()
            assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 700, box
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_the_api_docs_render_with_nothing_from_elsewhere(gpt2_tokenizer) -> None:
    app = create_app(_fast_model(), gpt2_tokenizer, "tiny")
    with BackgroundServer(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            elsewhere: list[str] = []

            def route(r) -> None:  # nothing beyond the server: as on a machine without internet
                if r.request.url.startswith(url):
                    r.continue_()
                else:
                    elsewhere.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(f"{url}/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
            assert "gpt2 serve" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path[data-path='/v1/completions']")
            page.screenshot(path="/tmp/docs.png")
            assert elsewhere == []
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_presets_prompt_the_paper_s_tasks(tmp_path: Path, gpt2_tokenizer) -> None:
    """Each preset fills the prompt the way the paper conditioned GPT-2 for a task, with the paper's decoding."""
    app = create_app(_fast_model(), gpt2_tokenizer, "tiny")
    with BackgroundServer(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.set_default_timeout(20_000)
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
            labels = page.eval_on_selector_all("#presets button", "els => els.map(e => e.textContent)")
            assert labels == ["Story", "Translate", "Summarize", "Reading comprehension", "Question answering"]
            expected = {  # preset: (how the prompt ends, temperature, top-k, stop, the section it cites)
                "Translate": (" =", "0", "off", "\\n", "3.7"),
                "Summarize": ("\nTL;DR:", "1", "2", "", "3.6"),
                "Reading comprehension": ("\nA:", "0", "off", "\\n", "3.5"),
                "Question answering": ("\nA:", "0", "off", "\\n", "3.8"),
                "Story": ("perfect English.", "1", "40", "", "top-k 40"),
            }
            for label, (end, temperature, top_k, stop, cites) in expected.items():
                page.click(f"#presets button:text-is('{label}')")
                prompt = page.input_value("#prompt")
                assert prompt.endswith(end), (label, prompt[-40:])
                assert page.inner_text("#temperature_v") == temperature and page.inner_text("#top_k_v") == top_k
                assert page.input_value("#stop_text") == stop and cites in page.inner_text("#preset_note")
                assert page.get_attribute(f"#presets button:text-is('{label}')", "class") == "on"
            assert " = " in page.evaluate("PRESETS.translate.prompt").split("\n")[0]  # english = french pairs
            page.click("#presets button:text-is('Translate')")
            page.click("#generate")
            page.wait_for_function("!document.getElementById('generate').disabled && "
                                   "document.getElementById('stats').textContent.includes('(')")  # fmt: skip
            output = page.inner_text("#output")
            prompt = page.input_value("#prompt")
            assert output.startswith(prompt) and "\n" not in output[len(prompt) :]  # greedy, up to the line's end
            page.click("#presets button:text-is('Story')")
            page.click("#generate")
            page.wait_for_function("!document.getElementById('generate').disabled && "
                                   "document.querySelectorAll('#output .tok').length > 20")  # fmt: skip
            shot = tmp_path / "preset.png"
            page.screenshot(path=str(shot))
            shutil.copy(shot, "/tmp/playground_preset.png")
        finally:
            browser.close()
