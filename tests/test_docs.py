"""The docs site builds in strict mode, and the README's map and links lead to real pages and anchors.

`mkdocs build --strict` fails on any warning: a broken link or anchor between pages, a page left out of the nav,
a missing snippet, and a docstring that griffe cannot parse in the API reference (docs/api/).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import python

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The objects the API reference must document, by the page that documents them.
API = {
    "loss": ["trm_act.loss.TRMLoss", "trm_act.loss.LossConfig"],
    "model": [
        "trm_act.model.RecurrentTRM",
        "trm_act.model.TRMConfig",
        "trm_act.act.act_predict",
        "trm_act.act.ACTResult",
    ],
    "policy": ["trm_act.policy.Policy"],
    "envs": ["trm_act.envs.TradeReplayEnv", "trm_act.envs.TradeReplayConfig"],
    "callbacks": [
        "trm_act.callbacks.Callback",
        "trm_act.callbacks.TensorBoardCallback",
        "trm_act.callbacks.lightning.TRMLightningCallback",
        "trm_act.callbacks.sb3.TRMSB3Callback",
        "trm_act.callbacks.hf.TRMHFCallback",
    ],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    command = ["build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site_dir)]
    result = python("-m", "mkdocs", *command, cwd=ROOT, NO_MKDOCS_2_WARNING="1")
    assert result.returncode == 0, (
        f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return site_dir


def test_mkdocs_build_strict_succeeds(site):
    assert (site / "index.html").is_file()
    assert (site / "faq" / "index.html").is_file()


@pytest.mark.parametrize("page", list(API))
def test_the_api_reference_documents_the_main_names(site, page):
    html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
    for name in API[page]:
        assert f'id="{name}"' in html, f"docs/api/{page}.md does not document {name}"
    assert "Bars per observation" in (site / "api" / "model" / "index.html").read_text(encoding="utf-8"), (
        "TRMConfig's field docstrings are missing: griffe did not read the source"
    )


def topic_pages() -> list[str]:
    return sorted(p.relative_to(DOCS).as_posix() for p in DOCS.glob("*.md") if p.name != "index.md")


@pytest.mark.parametrize("map_page", ["README.md", "docs/index.md"])
def test_the_map_of_the_docs_lists_every_page(map_page):
    text = (ROOT / map_page).read_text(encoding="utf-8")
    prefix = "docs/" if map_page == "README.md" else ""
    missing = [page for page in topic_pages() if f"]({prefix}{page})" not in text]
    assert not missing, f"{map_page} does not link {missing}"
    assert f"]({prefix}api/index.md)" in text


def test_the_readmes_links_into_the_docs_resolve(site):
    # mkdocs checks links between pages; the README is not a page, so its links are checked here, anchors
    # against the built site (mkdocs.yml makes GitHub's anchors, so the same link works on GitHub).
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[^)#]+\.md)(?:#([^)]+))?\)", text)
    assert len(links) >= 10
    for path, anchor in links:
        assert (ROOT / path).is_file(), path
        if anchor:
            page = Path(path).relative_to("docs").with_suffix("")
            html = site / (page.parent if page.name == "index" else page) / "index.html"
            assert f'id="{anchor}"' in html.read_text(encoding="utf-8"), f"{path}#{anchor}"


def test_the_readme_states_the_ci_test_command_and_fits_250_lines():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = 'pip install -e ".[dev]" && pytest'
    assert ci in text and ci in (ROOT / ".ci" / "run").read_text(
        encoding="utf-8"
    )  # CI runs the README's command
    assert "python -m trm_act.train --env trade-replay" in text and "tensorboard --logdir runs" in text
    assert len(text.splitlines()) <= 250
