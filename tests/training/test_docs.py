"""docs/training.md names every recipe field (so the guide cannot fall behind the recipe)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from training.recipe import Recipe

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def _leaves(cls: type[BaseModel]) -> set[str]:
    out = set()
    for name, field in cls.model_fields.items():
        ann = field.annotation
        out |= _leaves(ann) if isinstance(ann, type) and issubclass(ann, BaseModel) else {name}
    return out


def test_every_recipe_field_is_documented():
    text = DOC.read_text()
    missing = sorted(name for name in _leaves(Recipe) if f"`{name}`" not in text)
    assert not missing, f"docs/training.md does not mention: {missing}"
