"""TeacherEnsemble: slots and priors shaped by teacher weights, weights that follow returns,
teachers with other tokenizers, a failing teacher survived, tiers and loading."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from azgym.env import ReasoningEnv
from azgym.lm.base import Generation
from azgym.tasks import Problem
from azgym.teachers import RIGHT, WRONG, ProposalRequest, Teacher, TeacherEnsemble, load_teachers
from helpers import ScriptedLM

PROBLEM = Problem(id="p0", question="What is 2 + 3?", gold="5")
REQUEST = ProposalRequest(problem_id="p0", question=PROBLEM.question, response_ids=(), max_tokens=64, seed=1)


def scripted(name: str, answer: str) -> ScriptedLM:
    lm = ScriptedLM({"": [(f"{name} says #### {answer}\n", False), (f"{name} thinks #### {answer}\n", False)]})
    lm.name = name
    return lm


def ensemble(*lms, scorer=None, **kwargs) -> TeacherEnsemble:
    scorer = scorer or lms[0]
    options = dict(system_prompt=None, num_right=2, num_wrong=2, refill_rounds=0) | kwargs
    return TeacherEnsemble(scorer, [Teacher(lm) for lm in lms], **options)


def test_equal_weights_share_each_label_evenly():
    good, bad = scripted("good", "5"), scripted("bad", "7")
    (candidates,) = ensemble(good, bad).propose([REQUEST])
    by = {(c.teacher, c.label) for c in candidates}
    assert by == {("good", RIGHT), ("good", WRONG), ("bad", RIGHT), ("bad", WRONG)}
    assert np.isclose(sum(c.prior for c in candidates), 1.0)


def test_weights_move_toward_the_teacher_whose_candidates_earn_more():
    good, bad = scripted("good", "5"), scripted("bad", "7")
    teachers = ensemble(good, bad, scorer=ScriptedLM({}))
    env = ReasoningEnv([PROBLEM], model=good, proposer=teachers, rewards="outcome", max_steps=2)
    env.reset(seed=0)
    env.step(0)
    assert teachers.values == {"good": 0.0, "bad": 0.0}  # the env itself credits no one
    env.on_episode_end = teachers.credit
    rng = np.random.default_rng(0)
    picked = {"good": 0, "bad": 0}
    for seed in range(12):  # random play: the scripted reward pays +1 for "good"'s answer, -1 for "bad"'s
        _, info = env.reset(seed=seed)
        action = int(rng.choice(np.flatnonzero(info["action_mask"])))
        picked[env.candidates()[action].teacher] += 1
        _, reward, terminated, _, _ = env.step(action)
        assert terminated and reward == (1.0 if env.get_state().teachers == ("good",) else -1.0)
    assert picked["good"] > 0 and picked["bad"] > 0
    weights = teachers.weights
    assert weights["good"] > 0.6 > weights["bad"], weights
    # the weights shape the slots: a fresh state now gets more of "good"'s candidates
    teachers.clear_cache()
    fresh = teachers.propose([ProposalRequest("p0", PROBLEM.question, (), 64, seed=99)])[0]
    assert sum(c.teacher == "good" for c in fresh) > sum(c.teacher == "bad" for c in fresh)


def test_weights_shape_the_priors():
    good, bad = scripted("good", "5"), scripted("bad", "7")
    teachers = ensemble(good, bad, num_right=2, num_wrong=0)  # one slot each at equal weights
    even = {c.teacher: c.prior for c in teachers.propose([REQUEST])[0]}
    assert np.isclose(even["good"], even["bad"])  # every token scores the same: equal weights, equal priors
    teachers.values["good"] = 1.0
    leaning = {c.teacher: c.prior for c in teachers.propose([REQUEST])[0]}
    assert leaning["good"] > 0.9 and np.isclose(sum(leaning.values()), 1.0)


def test_nan_return_is_refused():
    teachers = ensemble(scripted("good", "5"), scripted("bad", "7"))
    with pytest.raises(ValueError, match="not a finite number"):
        teachers.observe(["good"], float("nan"))


class Broken(ScriptedLM):
    def generate(self, *args, **kwargs):
        raise RuntimeError("out of memory")


def test_a_teacher_that_raises_is_dropped_and_the_episode_finishes(caplog):
    broken = Broken({})
    broken.name = "broken-teacher"
    good = scripted("good", "5")
    teachers = ensemble(good, broken, num_right=2, num_wrong=0)
    env = ReasoningEnv([PROBLEM], model=good, proposer=teachers, rewards="outcome", max_steps=2)
    with caplog.at_level(logging.WARNING, logger="azgym.teachers"):
        _, info = env.reset(seed=0)
        assert info["action_mask"].sum() == 2  # the broken teacher's slot went to the other
        _, reward, terminated, truncated, _ = env.step(0)
    assert terminated and reward == 1.0
    assert "broken-teacher" in caplog.text and "out of memory" in caplog.text
    assert list(teachers.weights) == ["good"] and "broken-teacher" in teachers.dropped


def test_malformed_output_counts_as_failure_and_no_teacher_left_is_an_error():
    class Empty(ScriptedLM):
        def generate(self, prompts, **kwargs):
            return []

    lone = Empty({})
    lone.name = "empty"
    with pytest.raises(RuntimeError, match="every teacher failed: empty: RuntimeError: returned 0 results"):
        TeacherEnsemble(lone, [Teacher(lone)], system_prompt=None).propose([REQUEST])


def test_a_teacher_with_another_tokenizer_is_re_encoded_for_the_scorer(tiny_lm):
    other = scripted("other", "5")
    teachers = TeacherEnsemble(tiny_lm, [Teacher(other)], system_prompt=None, num_right=1, num_wrong=0)
    (candidate,) = teachers.propose([REQUEST])[0]
    assert candidate.teacher == "other"
    assert candidate.token_ids == tuple(tiny_lm.encode("other says #### 5\n"))
    assert np.isfinite(candidate.logprob) and candidate.prior == 1.0


def test_few_shot_prompt_carries_the_response_as_text(tiny_lm):
    seen = []

    class Recorder(ScriptedLM):
        def generate(self, prompts, **kwargs):
            seen.extend(self.decode(p) for p in prompts)
            return [[Generation("x\n", (120, 10), (-0.5, -0.5), "stop")] for _ in prompts]

    base = Recorder({})
    base.name = "base"
    teachers = TeacherEnsemble(tiny_lm, [Teacher(base, style="few_shot")], system_prompt=None, num_right=1,
                               num_wrong=1, refill_rounds=0)  # fmt: skip
    teachers.propose([REQUEST])
    assert len(seen) == 2 and all(s.endswith("Question: What is 2 + 3?\nAnswer:") for s in seen)
    assert "mistake" in seen[1] and "mistake" not in seen[0]


def test_load_teachers_skips_a_model_that_cannot_load(tiny_lm, caplog):
    with caplog.at_level(logging.WARNING, logger="azgym.teachers"):
        teachers = load_teachers(f"{tiny_lm.name},no-such-model", tiny_lm)
    assert [t.name for t in teachers] == [tiny_lm.name] and teachers[0].lm is tiny_lm
    assert "no-such-model" in caplog.text
    with pytest.raises(RuntimeError, match="no teacher could be loaded"):
        load_teachers("no-such-model", tiny_lm)


def test_own_right_candidates_are_sampled_under_the_solve_prompt_and_carry_their_priors(tiny_lm, monkeypatch):
    from azgym.prompts import solve_prompt_ids, teacher_messages

    request = ProposalRequest(problem_id="p0", question=PROBLEM.question, response_ids=(5, 6), max_tokens=8, seed=3)
    options = dict(system_prompt="Solve it.", num_right=3, num_wrong=1, chunk_tokens=6, refill_rounds=0)
    scored, prompted = [], []
    real_score, real_generate = tiny_lm.score, tiny_lm.generate
    monkeypatch.setattr(tiny_lm, "score", lambda p, c: scored.extend(c) or real_score(p, c))
    monkeypatch.setattr(tiny_lm, "generate", lambda p, **kw: prompted.extend(map(list, p)) or real_generate(p, **kw))
    own = TeacherEnsemble(tiny_lm, [Teacher(tiny_lm)], right_prompt="solve", **options).propose([request])[0]
    solve = solve_prompt_ids(tiny_lm, "Solve it.", PROBLEM.question) + [5, 6]
    wrong = tiny_lm.chat_prompt(teacher_messages(WRONG, PROBLEM.question)) + [5, 6]
    assert sorted(map(tuple, prompted)) == sorted([tuple(solve)] * 3 + [tuple(wrong)])
    rights = [c for c in own if c.label == RIGHT]
    assert rights and [c.label for c in own].count(WRONG) == 1
    assert [tuple(c) for c in scored] == [next(c.token_ids for c in own if c.label == WRONG)]  # only it is scored
    for c in rights:  # the carried prior is the scoring pass's mean log-prob of the same tokens
        assert c.logprob == pytest.approx(float(np.mean(real_score([solve], [c.token_ids])[0])), abs=1e-4)
    with pytest.raises(ValueError, match="right_prompt must be one of"):
        TeacherEnsemble(tiny_lm, [Teacher(tiny_lm)], right_prompt="student", **options)
