"""One source of truth per check: docs/checks.md and README's check table are generated from the
declared specs and must not be stale; every check documents itself and declares its thresholds; one naming
scheme across tiers; thresholds are overridable per run; docs link only to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tbkit.checks import TIER_MODULES, catalogue, checks_for

ROOT = Path(__file__).resolve().parents[2]
SPECS = checks_for(sorted(TIER_MODULES))


STALE = "is stale: regenerate it with `PYTHONPATH=python python3 -m tbkit.checks.catalogue --write`"


def test_docs_checks_md_is_generated_from_the_registry_and_not_stale():
    committed = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    assert committed == catalogue.render(), f"docs/checks.md {STALE}"


def test_readme_check_table_is_generated_from_the_specs_and_not_stale():
    committed = (ROOT / "README.md").read_text(encoding="utf-8")
    assert catalogue.readme_table() in committed, f"README.md's check table {STALE}"
    assert catalogue.readme_with_table(committed) == committed


def test_the_catalogue_writes_both_pages(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        f"# x\n\n{catalogue.README_BEGIN}\nHAND-WRITTEN\n{catalogue.README_END}\n\nafter\n"
    )
    assert catalogue.main(["--write", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "docs" / "checks.md").read_text(encoding="utf-8") == catalogue.render()
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert catalogue.readme_table() in readme and "HAND-WRITTEN" not in readme and readme.endswith("after\n")
    assert catalogue.write(tmp_path) == []  # current: nothing rewritten


def test_every_declared_option_has_a_type_a_default_of_that_type_and_help():
    from tbkit.checks import RUN_OPTIONS, validate_options

    for spec in SPECS:
        for name, option in spec.declared().items():
            assert option.help, name
            assert validate_options({name: option.default}, [spec.id]) == (
                {} if option.default is None else {name: option.default}
            )
    for name, option in RUN_OPTIONS.items():
        assert option.help, name


def test_every_check_is_named_check_id_and_documents_why_thresholds_and_fix():
    ids = [s.id for s in SPECS]
    assert {"shape", "causal", "padding", "speed", "attention", "attribution", "overfit", "baseline"} <= set(ids)
    for spec in SPECS:
        assert spec.func.__name__ == f"check_{spec.id}", spec.id
        doc = spec.doc
        assert "Why:" in doc and "Fix:" in doc and "Threshold" in doc, spec.id
        for name in spec.thresholds:
            assert f"``{name}``" in doc, (spec.id, name)  # every declared threshold is explained


def test_the_catalogue_lists_each_threshold_with_its_default():
    page = catalogue.render()
    assert "`batch_equivalence` | row i of a batched forward" in page
    assert "`pass_rel` = 1e-05" in page and "`min_timings` = 6" in page and "`future_mass` = 1e-06" in page


def test_a_threshold_is_overridden_by_the_run_option(tmp_path):
    import models as M
    import tbkit

    lm = M.loaded(M.build(M.HealthyDecoder))
    (row,) = tbkit.run(lm, checks="determinism", out_dir=tmp_path / "a", progress=False).rows
    assert row.threshold == "<= 1e-06"
    (row,) = tbkit.run(
        lm, checks="determinism", out_dir=tmp_path / "b", progress=False, options={"determinism.max_diff": 0.5}
    ).rows
    assert row.threshold == "<= 5e-01"
    rows = tbkit.run(
        M.loaded(M.build(M.LeakyMaskDecoder)),
        checks="causal",
        out_dir=tmp_path / "c",
        progress=False,
        options={"causal.max_change": 1e9},
    ).rows
    assert {r.status.value for r in rows} == {"PASS"}  # a limit nothing can exceed: the leak is tolerated


@pytest.mark.parametrize("doc", sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")]), ids=lambda p: p.name)
def test_docs_link_only_to_files_that_exist(doc):
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (doc.parent / target).exists():
            broken.append(target)
    assert broken == [], f"{doc.name} links to missing files: {broken}"
