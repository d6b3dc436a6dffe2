"""The playground page (GET /) in a real browser: Debian's headless Chromium, driven by Playwright."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")
httpx = pytest.importorskip("httpx")

from gpt2 import GPT, GPTConfig  # noqa: E402
from gpt2.serve.app import BackgroundServer, create_app  # noqa: E402

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
