"""One home per concept: the config and its generated CLI, env-var overrides, one prompt source, the layout."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.alphazero.config import ALIASES, PRESETS, RunConfig
from agents.alphazero.selfplay import self_play
from agents.mcts import MCTSAgent
from agents.policy import PriorAgent
from azgym.cli import ConfigParser, parse_config, to_dict
from azgym.config import ENV_DEFAULTS, ConfigError, EnvConfig
from azgym.env import ReasoningEnv
from azgym.prompts import PROMPT_STYLES, solve_prompt_ids, system_prompt
from azgym.tasks import arithmetic
from helpers import ScriptedLM

REPO = Path(__file__).resolve().parents[1]


def run_config(argv, environ=None) -> RunConfig:
    return parse_config(RunConfig, argv, environ=environ or {}, presets=PRESETS, default_preset="cpu", aliases=ALIASES)


def test_every_flag_is_documented_and_every_field_has_a_flag():
    parser = ConfigParser(RunConfig, presets=PRESETS, default_preset="cpu", aliases=ALIASES)
    built = parser.build(PRESETS["cpu"]())
    documented = {a.dest: a.help for a in built._actions if a.dest != "help"}
    base = PRESETS["cpu"]()
    fields = {f"{section}.{f.name}" for section in parser.sections for f in dataclasses.fields(getattr(base, section))}
    assert fields <= set(documented)
    for action in built._actions:
        if action.dest in fields and action.option_strings[0] not in {alias.flag for alias in ALIASES}:
            meaning = action.help.split(" (default: ")[0]
            assert "(default: " in action.help and len(meaning.split()) >= 3, f"{action.dest}: {action.help!r}"
        assert action.help, action.dest
    for preset in PRESETS.values():  # the help text formats (argparse reads '%' as a format)
        assert "--simulations" in parser.build(preset()).format_help()


def test_precedence_preset_then_env_var_then_flag():
    assert run_config([]).search.num_simulations == 4  # the cpu preset
    assert run_config([], {"NUM_MCTS_ITERATIONS": "7"}).search.num_simulations == 7
    assert run_config(["--simulations", "3"], {"NUM_MCTS_ITERATIONS": "7"}).search.num_simulations == 3
    config = run_config(["--preset", "gpu"], {"MAX_TREE_DEPTH": "5", "MAX_TOKENS": "99"})
    assert (config.env.task, config.env.max_steps, config.env.max_tokens) == ("gsm8k", 5, 99)
    assert run_config(["--max-depth", "6"]).env.max_steps == 6  # the seed's flag name is an alias


def test_loss_flag_and_the_seed_aliases_do_what_they_say():
    assert run_config(["--loss", "apo"]).learner.loss == "apo"
    assert run_config(["--use-legacy"]).learner.loss == "legacy"
    assert run_config(["--loss", "apo", "--use-grpo"]).learner.loss == "grpo"
    assert run_config(["--distill"]).learner.distill_coef == 0.5


def test_bad_values_end_with_one_line_naming_the_flag(capsys):
    cases = {
        ("--learning-rate", "nan"): "--learning-rate: must be a finite number",
        ("--simulations", "-3"): "--simulations: must be >= 1, got -3",
        ("--num-right", "0", "--num-wrong", "0"): "--num-wrong: must be >= 0, with num_right + num_wrong >= 1",
        ("--use-legacy", "--group-size", "1", "--eval-size", "0"): "--eval-size: must be >= 1",
    }
    for argv, message in cases.items():
        with pytest.raises(SystemExit) as stop:
            run_config(list(argv))
        assert stop.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_config([], {"MAX_TOKENS": "many"})
    assert "environment variable MAX_TOKENS='many' must be an integer" in capsys.readouterr().err


def test_config_json_holds_resolved_values_without_placeholders():
    saved = to_dict(run_config([], {"NUM_MCTS_ITERATIONS": "2"}))
    assert saved["search"]["num_simulations"] == 2  # what ran, not a 0 meaning "look it up"
    assert (saved["env"]["max_steps"], saved["env"]["max_tokens"], saved["env"]["task"]) == (4, 64, "arithmetic")
    assert saved == to_dict(RunConfig(**{k: type(getattr(RunConfig(), k))(**v) for k, v in saved.items()}))


def test_sections_validate_on_construction():
    with pytest.raises(ConfigError, match="max_steps: must be >= 1"):
        EnvConfig(max_steps=0)
    with pytest.raises(ConfigError, match="task: must be one of arithmetic, countdown, gsm8k"):
        EnvConfig(task="chess")
    assert ReasoningEnv.__init__.__kwdefaults__["num_right"] == ENV_DEFAULTS.num_right


def _evaluate_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up while the script is defined
    spec.loader.exec_module(script)
    return script


def test_evaluate_runs_a_checkpoint_at_the_commands_precision(monkeypatch):
    script = _evaluate_script()
    asked = {}
    monkeypatch.setattr(script, "load_student", lambda path, **kwargs: asked.update(kwargs, path=path))
    for precision in ("float32", "bfloat16"):
        config = parse_config(script.EvaluateConfig, ["--checkpoint", "runs/x", "--precision", precision],
                              presets=script.PRESETS, default_preset="cpu")  # fmt: skip
        script.build(config, trained=True)
        assert asked == {"path": "runs/x", "device": "cpu", "precision": precision}


def test_evaluate_searches_with_the_env_var_simulation_count():
    script = _evaluate_script()
    config = parse_config(script.EvaluateConfig, ["--mode", "mcts"], environ={"NUM_MCTS_ITERATIONS": "2"},
                          presets=script.PRESETS, default_preset="cpu")  # fmt: skip
    assert config.search.num_simulations == 2 and config.search.dirichlet_fraction == 0.0
    problem = arithmetic.make_problems("add1", 1, seed=0)[0]
    lm = ScriptedLM({"": [(f"#### {problem.gold}\n", False), ("#### 99\n", False)]})
    env = ReasoningEnv.from_config(config.env, model=lm, data=[problem])
    env.reset(seed=0)
    result = MCTSAgent(config=config.search, seed=0).search(env, [env.get_state()])
    assert result.num_simulations == 2 and result.visits.sum() == 2


@pytest.mark.parametrize("style", [*PROMPT_STYLES, "Answer briefly."])
def test_training_search_and_evaluation_prompts_are_one_prompt(tiny_lm, style):
    problems = arithmetic.make_problems("add1", 2, seed=0)
    env = ReasoningEnv(problems, model=tiny_lm, task="arithmetic", chunk_tokens=2, max_steps=1, prompt=style)
    episodes, _ = self_play(env, PriorAgent(), [0, 1], 1, np.random.default_rng(0), iteration=0, weights_version=0,
                            progress=False)  # fmt: skip
    for episode, problem in zip(episodes, problems, strict=True):
        evaluation = solve_prompt_ids(tiny_lm, system_prompt("arithmetic", style), problem.question)
        assert episode.prompt_ids == env.solve_prompt(problem) == evaluation


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_search_core_imports_nothing_from_azgym_and_modules_stay_small():
    for name in ("tree", "kernels", "gumbel", "search"):
        assert not {m for m in _imports(REPO / "agents" / "mcts" / f"{name}.py") if m.split(".")[0] == "azgym"}
    for package in ("azgym", "agents", "scripts", "azgym_verifiers", "azgym_bench"):
        for path in (REPO / package).rglob("*.py"):
            assert len(path.read_text().splitlines()) <= 430, f"{path} has grown past ~400 lines: split it"
    for path in [*(REPO / "azgym").rglob("*.py"), *(REPO / "azgym_verifiers").rglob("*.py")]:
        assert not {m for m in _imports(path) if m.split(".")[0] == "agents"}, f"{path} imports agents"
        assert not {m for m in _imports(path) if m.split(".")[0] == "verifiers"} or "azgym_verifiers" in path.parts, (
            f"{path} imports verifiers (only the optional adapter azgym_verifiers/ may)"
        )


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in its body (lazy imports too, not ``TYPE_CHECKING``
    blocks; a module importing its own package's ``__init__`` is not an edge)."""
    modules = {}
    for package in ("azgym", "agents"):
        for path in (REPO / package).rglob("*.py"):
            modules[".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = path

    def imported(node, out):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.Import):
                out += [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out += [f"{child.module}.{a.name}" for a in child.names]
            imported(child, out)
        return out

    graph = {}
    for name, path in modules.items():
        targets = set()
        for target in imported(ast.parse(path.read_text()), []):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


def test_no_import_cycle_between_modules_or_between_the_agents_packages():
    graph = _import_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        if name.startswith("agents."):
            own = ".".join(name.split(".")[:2])
            packages.setdefault(own, set()).update(
                ".".join(t.split(".")[:2]) for t in targets if t.startswith("agents.") and not t.startswith(own)
            )
    assert _cycle(packages) is None, " -> ".join(_cycle(packages))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check finds one


def test_only_the_ray_module_imports_ray_and_workers_without_ray_is_one_line(monkeypatch, capsys):
    import subprocess

    import agents.alphazero.config as config

    code = "import sys, agents.alphazero.run, agents.distributed; assert 'ray' not in sys.modules, 'ray imported'"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]

    real = config.importlib.util.find_spec
    monkeypatch.setattr(config.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(SystemExit):
        run_config(["--workers", "2"])
    assert "--workers: needs Ray, which is not installed: pip install 'azgym[ray]'" in capsys.readouterr().err
    assert run_config([]).loop.workers == 0  # the default never looks for Ray
    with pytest.raises(SystemExit):
        run_config(["--ray-address", "auto"])
    assert "--ray-address: must be '' without --workers" in capsys.readouterr().err
