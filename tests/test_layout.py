"""The package's layers import in one direction (docs/DESIGN.md):
utils -> layers -> models -> data, engine -> analysis -> recipes; config is read by all."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gcvideo")
RANK = {"utils": 0, "layers": 1, "models": 2, "data": 3, "engine": 3, "analysis": 4, "recipes": 5}
ALLOWED_SIDEWAYS = {("engine", "data")}  # the engine's loops use the data layer's datasets and collate


def _imports(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno


def _package_files():
    for layer in RANK:
        for dirpath, _, files in os.walk(os.path.join(ROOT, layer)):
            for f in files:
                if f.endswith(".py"):
                    yield layer, os.path.join(dirpath, f)


@pytest.mark.parametrize("layer,path", list(_package_files()), ids=lambda v: os.path.relpath(v, ROOT)
                         if isinstance(v, str) and v.endswith(".py") else v)
def test_imports_flow_one_way(layer, path):
    wrong = []
    for module, line in _imports(path):
        parts = module.split(".")
        if parts[0] != "gcvideo" or len(parts) < 2 or parts[1] not in RANK or parts[1] == layer:
            continue
        target = parts[1]
        if RANK[target] > RANK[layer] or (RANK[target] == RANK[layer] and (layer, target) not in ALLOWED_SIDEWAYS):
            wrong.append(f"{os.path.relpath(path, ROOT)}:{line} imports {module}")
    assert not wrong, "imports against the layer order: " + "; ".join(wrong)


def test_the_rule_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from gcvideo.engine.trainer import train\n")
    assert [m for m, _ in _imports(str(bad))] == ["gcvideo.engine.trainer"]
    assert RANK["engine"] > RANK["models"]
