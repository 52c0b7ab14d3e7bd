"""``backup_cinderblock_changes_from`` templates (``engine.drivers.changes_from``): checked
once, expanded per backup from vetted values. No Cinder needed: the driver's behaviour with
them inside real Cinder is ``inner/cases_changes.py``."""

from __future__ import annotations

import pytest

from engine.changesources import ChangedExtentsFile, RbdDiff, ReflinkSnapshot, ThinDelta
from engine.drivers.changes_from import ChangesTemplate, TemplateError

P = "6b1e9c4e-2d4f-4e55-9a53-5b3a2c1d0e0f"
V = "98db149d-b9e6-42d7-814d-492563c56fef"
VALUES = {
    "volume_id": V,
    "volume_name": f"volume-{V}",
    "project_id": "0f3a9f6c5e0d4bd2a6f1c1e9d3b7a001",
    "backup_id": "1e0b2c3d-4e5f-46a7-b8c9-d0e1f2a3b4c5",
    "parent_backup_id": P,
    "parent_blockmap": P,
}


@pytest.mark.parametrize(
    ("template", "kind", "cls", "path"),
    [
        ("/srv/t/{volume_id}.json", "json", ChangedExtentsFile, f"/srv/t/{V}.json"),
        ("json:/srv/t/{volume_name}.json", "json", ChangedExtentsFile, f"/srv/t/volume-{V}.json"),
        (
            "rbd-diff:/d/{volume_id}/{parent_backup_id}.json",
            "rbd-diff",
            RbdDiff,
            f"/d/{V}/{P}.json",
        ),
        (
            "thin-delta:/d/{parent_blockmap}.xml?base={parent_blockmap}",
            "thin-delta",
            ThinDelta,
            f"/d/{P}.xml",
        ),
        ("reflink:/s/{volume_id}@{parent_backup_id}", "reflink", ReflinkSnapshot, f"/s/{V}@{P}"),
        ("json:/d/{{literal}}/{volume_id}", "json", ChangedExtentsFile, f"/d/{{literal}}/{V}"),
    ],
)
def test_a_template_expands_to_the_engines_change_source(template, kind, cls, path):
    t = ChangesTemplate.parse(template)
    assert t.kind == kind
    source = t.expand(VALUES)
    assert type(source) is cls
    assert source.describe() == f"{kind}:{path}"
    if kind != "json":
        assert source.base == P  # ?base= filled in from the path's placeholder when left out


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("/x/{volume_id.__class__}", "{volume_id.__class__} is not a placeholder; use {volume_id}"),
        ("/x/{volume_id[0]}", "is not a placeholder"),
        ("/x/{volume_id!r}", "{volume_id!r} is not a placeholder"),
        ("/x/{volume_id:>40}", "{volume_id:>40} is not a placeholder"),
        ("/x/{display_name}", "{display_name} is not a placeholder"),
        ("/x/{volume_id", "is not a valid template"),
        ("rbd-diff:/x/{volume_id}.json", "its path must name the base: put {parent_backup_id}"),
        ("thin-delta:/x/{volume_id}?base={parent_backup_id}", "its path must name the base"),
        ("rbd-diff:/x/{parent_backup_id}?base=nope", "base='nope' must be a backup id"),
        ("qemu-bitmap", "qemu-bitmap reads dirty bitmaps over an NBD export"),
        ("qemu-bitmap:cinderblock-{parent_backup_id}", "qemu-bitmap reads dirty bitmaps"),
        ("lvm:/x/{volume_id}", "unknown change source 'lvm'"),
        ("   ", "is empty; leave it unset for no change source"),
        ("/x/\n{volume_id}", "must be one line of text"),
    ],
)
def test_a_bad_template_is_refused_naming_the_option(template, why):
    with pytest.raises(TemplateError) as e:
        ChangesTemplate.parse(template)
    assert e.value.reason.startswith("backup_cinderblock_changes_from"), e.value.reason
    assert why in e.value.reason, e.value.reason


@pytest.mark.parametrize("bad", ["../etc", "a/b", ".hidden", "x?base=y", "", "a b", "x\0"])
def test_an_unsafe_value_is_refused_not_expanded(bad):
    t = ChangesTemplate.parse("json:/srv/t/{volume_name}.json")
    with pytest.raises(TemplateError) as e:
        t.expand(dict(VALUES, volume_name=bad))
    assert "is not a single safe path component" in e.value.reason


def test_a_missing_value_is_refused():
    t = ChangesTemplate.parse("rbd-diff:/d/{parent_backup_id}.json")
    with pytest.raises(TemplateError) as e:
        t.expand(dict(VALUES, parent_backup_id=None))
    assert e.value.reason == (
        "backup_cinderblock_changes_from: {parent_backup_id} has no value for this backup"
    )
