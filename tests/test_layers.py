"""The package's import structure: one direction of dependencies, every sibling import at module top.

The layers (docs/architecture.md): a module may import modules of its own layer or below, never above,
and the imports among modules form no cycle. A new module must be placed in LAYERS, which makes its place a
decision rather than an accident.
"""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sft"

LAYERS = [
    {"io", "layout", "prompts", "chat", "loss", "attention", "synthetic", "plots"},  # none but sft.io (the JSONL
    # writer); chat: conversations validated and rendered through a chat template
    {"data", "checkpoints", "generate", "report", "tasks", "lora", "dialogues"},  # rows and tokens; checkpoint
    # folders; decoding; tables and intervals; lm-eval task configs; LoRA adapters through peft; the synthetic
    # dialogues (over synthetic's families)
    {"collate", "modeling", "prune", "inspect_data", "results", "compare"},  # batches; models and tokenizers;
    # pruning; data statistics; lm-eval results to summary rows; results read back, plotted and tabulated
    {"checks", "config"},  # a downloaded model and data checked; settings and presets
    {"manifest"},  # run manifests (read the config back)
    {"train", "evaluate", "plan"},  # the Trainer; held-out metrics and lm-eval; a run's cost before it starts
    {"case_study", "demo", "sweep", "reference"},  # studies built from training and evaluation; the offline
    # reference chain
    {"__main__"},  # the command line
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def sibling_imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module imported, line, at module top?) for every import of an sft module in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)}  # TYPE_CHECKING blocks
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module == "sft" or node.module.startswith("sft.")):
            names = [node.module.split(".")[1]] if node.module != "sft" else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("sft.")]
        else:
            continue
        found += [(name, node.lineno, id(node) in top) for name in names]
    return found


def modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(LAYER))
    assert not missing, (f"place the new module(s) {missing} in a layer of tests/test_layers.py "
                         "(and docs/architecture.md)")


def test_sibling_imports_are_at_module_top():
    inside = [f"sft/{name}.py:{line} imports sft.{mod} inside a function"
              for name, path in modules().items() for mod, line, at_top in sibling_imports(path) if not at_top]
    assert not inside, "move these imports to the top of the module (a cycle they hide must be cut):\n" + \
        "\n".join(inside)


def test_imports_point_down_the_layers():
    upward = [f"sft/{name}.py:{line} (layer {LAYER[name]}) imports sft.{mod} (layer {LAYER[mod]})"
              for name, path in modules().items() for mod, line, _ in sibling_imports(path)
              if mod in LAYER and name in LAYER and LAYER[mod] > LAYER[name]]
    assert not upward, "imports must point to the same layer or below:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {name: {mod for mod, _, _ in sibling_imports(path) if mod != name} for name, path in modules().items()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_the_checker_sees_a_function_level_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import json\nfrom sft.layout import run_dir\n\ndef f():\n    from sft.train import train\n")
    assert sibling_imports(bad) == [("layout", 2, True), ("train", 5, False)]
