"""``backup_cinderblock_changes_from``: a change source named by a template over the backup.

Cinder hands a backup driver an open volume and a parent, never a change tracker. An
operator who has one (an LVM-thin or RBD backend whose diffs a hook saves, a changed-extents
file written by the hypervisor side, reflink snapshots of file-backed volumes) names where
its answer lies with a template in ``cinder.conf``, which the driver expands for each
incremental into one of the engine's change-source specs (``docs/change-sources.md``)::

    backup_cinderblock_changes_from = rbd-diff:/var/lib/cinder/diffs/{parent_backup_id}.json

The engine then binds the change set to its base as it always does: it is used only when
its base is exactly the parent Cinder chose, and audited; otherwise the whole volume is read
and the reason recorded. This module holds no Cinder import (so the template is testable
anywhere): it checks a template once, at ``check_for_setup_error``, and expands it per
backup from values it vets itself.

Why the rules below:

* Only the placeholders in :data:`PLACEHOLDERS`, each a plain ``{name}``: no attribute or
  index access (``{volume_id.__class__}``), conversion or format spec — a template is
  configuration, not code.
* Every value is an identifier Cinder or the driver made (ids, Cinder's ``volume.name`` from
  ``volume_name_template``), never a user-chosen display name, and must be a single safe path
  component (:data:`SAFE_VALUE`): no value can walk a path elsewhere or change the spec's
  kind or options.
* ``rbd-diff``, ``thin-delta`` and ``reflink`` outputs do not say which backup they are
  relative to, so their path must name the base (``{parent_backup_id}`` or
  ``{parent_blockmap}``): the file or snapshot a hook saved for backup P is found only when P
  is the parent, and ``?base=`` (filled in when left out) says the same. A ``json`` file
  names its base itself (``base_backup_id``) and may live anywhere.
* ``qemu-bitmap`` is refused: it reads dirty bitmaps over an NBD export, and a Cinder driver
  reads the ``volume_file`` Cinder opened, never an export.
"""

from __future__ import annotations

import re
import string
import uuid
from dataclasses import dataclass

from ..changesources import USAGE, ChangeSource, parse_source
from ..changesources.spec import KINDS
from ..errors import InvalidInput

OPTION = "backup_cinderblock_changes_from"

#: What a template may name, and what each is.
PLACEHOLDERS = {
    "volume_id": "the volume's id",
    "volume_name": "Cinder's name of the volume on its backend (volume_name_template)",
    "project_id": "the backup's project",
    "backup_id": "the new backup's id",
    "parent_backup_id": "the parent backup's id (the base the change set must be relative to)",
    "parent_blockmap": "the parent's block-map id (its service_metadata 'blockmap')",
}
PARENT_PLACEHOLDERS = ("parent_backup_id", "parent_blockmap")
#: Kinds whose tracker output cannot say its base: the path must name it.
BASELESS_KINDS = ("rbd-diff", "thin-delta", "reflink")
SAFE_VALUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


class TemplateError(InvalidInput):
    """The template (or a value for it) cannot name a change source; says why."""


@dataclass(frozen=True)
class ChangesTemplate:
    """A checked ``backup_cinderblock_changes_from`` template."""

    text: str
    kind: str

    @classmethod
    def parse(cls, text: str) -> ChangesTemplate:
        """Check ``text`` once; :class:`TemplateError` names what is wrong and how to fix it."""
        if not isinstance(text, str) or not text.strip():
            raise TemplateError(f"{OPTION} is empty; leave it unset for no change source")
        if "\0" in text or "\n" in text or len(text) > 4096:
            raise TemplateError(f"{OPTION} must be one line of text (at most 4096 characters)")
        names: list[str] = []
        try:
            fields = list(string.Formatter().parse(text))
        except ValueError as e:
            raise TemplateError(
                f"{OPTION} {text!r} is not a valid template ({e}); write placeholders as "
                "{name} and literal braces as {{ and }}"
            ) from None
        for _literal, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in PLACEHOLDERS or spec or conversion:
                raise TemplateError(
                    f"{OPTION} {text!r}: {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} is not a placeholder; use "
                    + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                )
            names.append(name)
        head = cls(text, "?")._render(_sample_values())
        kind = head.partition(":")[0] if head.partition(":")[0] in KINDS else "json"
        if kind == "qemu-bitmap":
            raise TemplateError(
                f"{OPTION} {text!r}: qemu-bitmap reads dirty bitmaps over an NBD export, and "
                "a Cinder driver reads the volume file Cinder opened; use json:, rbd-diff:, "
                "thin-delta: or reflink:"
            )
        if kind in BASELESS_KINDS:
            path = text.rpartition("?")[0] if "?" in text else text
            named = [p for p in PARENT_PLACEHOLDERS if "{" + p + "}" in path]
            if not named:
                raise TemplateError(
                    f"{OPTION} {text!r}: a {kind} output does not say which backup it is "
                    "relative to, so its path must name the base: put {parent_backup_id} in "
                    "it (the file or snapshot saved for that backup)"
                )
            if "?" not in text:
                text = f"{text}?base={{{named[0]}}}"
        try:
            parse_source(cls(text, kind)._render(_sample_values()))
        except InvalidInput as e:
            raise TemplateError(
                f"{OPTION} {text!r} does not expand to a change source: {e.reason}"
            ) from None
        return cls(text, kind)

    def expand(self, values: dict[str, str | None]) -> ChangeSource:
        """The change source for one backup (:class:`TemplateError` if a value is unsafe)."""
        return parse_source(self._render(values))

    def _render(self, values: dict[str, str | None]) -> str:
        out = []
        for literal, name, _spec, _conv in string.Formatter().parse(self.text):
            out.append(literal)
            if name is None:
                continue
            value = values.get(name)
            if value is None:
                raise TemplateError(f"{OPTION}: {{{name}}} has no value for this backup")
            value = str(value)
            if not SAFE_VALUE.fullmatch(value):
                raise TemplateError(
                    f"{OPTION}: {{{name}}} = {value!r} is not a single safe path component "
                    "(letters, digits, '_', '.', '-'); check volume_name_template"
                )
            out.append(value)
        return "".join(out)


def _sample_values() -> dict[str, str]:
    ids = {name: str(uuid.UUID(int=i + 1)) for i, name in enumerate(PLACEHOLDERS)}
    ids["volume_name"] = "volume-" + ids["volume_id"]
    ids["project_id"] = "0" * 32
    return ids


__all__ = ["OPTION", "PLACEHOLDERS", "USAGE", "ChangesTemplate", "TemplateError"]
