"""Metrics against scikit-learn and hand-worked examples; event post-processing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from independent_references import reference
from scipy.stats import norm
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from mwmae.evaluation import metrics as M
from mwmae.evaluation.events import frames_to_events, group_rows_by_file, predict_events
from mwmae.evaluation.report import ci95_half_width, overall_scores, results_table

pytestmark = pytest.mark.usefixtures("one_thread")


def test_top1_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    scores = rng.random((200, 7))
    y = rng.integers(0, 7, 200)
    assert M.top1_accuracy(scores, np.eye(7)[y]) == pytest.approx(
        accuracy_score(y, scores.argmax(1))
    )


def test_map_matches_sklearn_macro():
    rng = np.random.default_rng(1)
    targets = (rng.random((300, 6)) < 0.3).astype(int)
    scores = rng.random((300, 6)) + 0.5 * targets
    assert M.mean_average_precision(scores, targets) == pytest.approx(
        average_precision_score(targets, scores, average="macro")
    )
    # As heareval (issue #13.1): a class without positives is NOT left out; it counts with AP 0
    # (sklearn's value for it), i.e. the mean is over all 6 classes.
    targets[:, 2] = 0
    keep = [0, 1, 3, 4, 5]
    per_class = [average_precision_score(targets[:, c], scores[:, c]) for c in keep]
    assert M.mean_average_precision(scores, targets) == pytest.approx(sum(per_class) / 6)


def test_d_prime_hand_example_and_sklearn():
    # Hand-worked: negatives 0.1, 0.4; positives 0.35, 0.8 -> 3 of 4 pairs ordered: AUC 0.75.
    s = np.array([[0.1], [0.4], [0.35], [0.8]])
    t = np.array([[0], [0], [1], [1]])
    assert M.auc_roc(s, t) == pytest.approx(0.75)
    assert M.d_prime(s, t) == pytest.approx(math.sqrt(2) * 0.6744897501960817)
    rng = np.random.default_rng(2)
    targets = (rng.random((100, 4)) < 0.4).astype(int)
    scores = rng.random((100, 4)) + 0.3 * targets
    per_class = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(4)]
    assert M.d_prime(scores, targets) == pytest.approx(np.mean(math.sqrt(2) * norm.ppf(per_class)))


def ev(start, end, label):
    return {"start": float(start), "end": float(end), "label": label}


def test_event_onset_fmeasure_hand_worked():
    ref = {"f1": [ev(0, 500, "a"), ev(1000, 1500, "a"), ev(500, 900, "b")]}
    est = {
        "f1": [
            ev(150, 400, "a"),  # hit (150 ms from 0)
            ev(1300, 1400, "a"),  # 300 ms late: miss
            ev(650, 700, "b"),  # hit
            ev(0, 100, "c"),
        ]
    }  # no such reference label
    assert M.event_onset_counts(est, ref, 200.0) == (2, 4, 3)
    p, r = 2 / 4, 2 / 3
    assert M.event_onset_fmeasure(est, ref) == pytest.approx(2 * p * r / (p + r))
    # Offsets do not matter; a 50 ms collar keeps no hit.
    assert M.event_onset_fmeasure(est, ref, collar_ms=50.0) == pytest.approx(0.0)
    # As sed_eval: no estimated events -> precision and F undefined (NaN); hits 0 of some -> 0.
    assert math.isnan(M.event_onset_fmeasure({"f1": []}, ref))
    assert M.event_onset_fmeasure({"f1": [ev(5000, 5100, "a")]}, ref) == 0.0


def test_event_onset_matching_is_optimal_not_greedy():
    # est@150 could take either reference; only giving it ref@0 lets est@400 match ref@300.
    ref = {"f": [ev(0, 10, "a"), ev(300, 310, "a")]}
    est = {"f": [ev(150, 160, "a"), ev(400, 410, "a")]}
    assert M.event_onset_counts(est, ref, 200.0) == (2, 2, 2)
    # Events in different files never match.
    assert M.event_onset_counts({"g": est["f"]}, ref, 200.0)[0] == 0


def test_segment_error_rate_hand_worked():
    ref = {
        "f1": [ev(0, 1500, "a")],  # segments 0, 1
        "f2": [ev(0, 900, "a")],  # segment 0
        "f3": [ev(0, 1900, "a")],  # segments 0, 1
    }
    est = {
        "f1": [ev(500, 2500, "a"), ev(0, 900, "b")],  # a: 0, 1, 2; b: 0 -> two insertions
        "f2": [ev(0, 900, "b")],  # a substituted by b
        "f3": [ev(0, 900, "a")],  # segment 1 deleted
    }
    # S = 1, D = 1, I = 2, N_ref = 5.
    assert M.segment_error_rate(est, ref) == pytest.approx(4 / 5)
    assert M.segment_error_rate(ref, ref) == pytest.approx(0.0)


def test_frames_to_events_runs_filter_and_min_duration():
    ts = np.arange(40) * 50.0 + 25.0  # 50 ms frames
    probs = np.zeros((40, 2))
    probs[4:14, 0] = 0.9  # 10 frames: an event from ts[4] to ts[13]
    probs[20, 0] = 0.9  # a one-frame blip: removed by the 250 ms (5-frame) median filter
    probs[30:33, 1] = 0.9  # 3 frames: 100 ms long
    events = frames_to_events(probs, ts, ["a", "b"], median_filter_ms=0, min_duration_ms=0)
    assert {(e["label"], e["start"], e["end"]) for e in events} == {
        ("a", 225.0, 675.0),
        ("a", 1025.0, 1025.0),
        ("b", 1525.0, 1625.0),
    }
    events = frames_to_events(probs, ts, ["a", "b"], median_filter_ms=250, min_duration_ms=125)
    # The median filter drops the blip; the 100 ms event survives filtering (3 of 5 frames)
    # only at its centre frame, which is shorter than 125 ms.
    assert [(e["label"], e["start"], e["end"]) for e in events] == [("a", 225.0, 675.0)]


def test_predict_events_groups_rows_by_file_in_time_order():
    files = ["x", "y", "x", "y", "x"]
    ts = np.array([50.0, 0.0, 0.0, 50.0, 100.0])
    probs = np.array([[0.9], [0.1], [0.9], [0.1], [0.1]])
    rows = group_rows_by_file(files, ts)
    assert rows["x"].tolist() == [2, 0, 4]
    out = predict_events(probs, rows, ts, ["a"], median_filter_ms=0, min_duration_ms=0)
    assert out == {"x": [{"label": "a", "start": 0.0, "end": 50.0}], "y": []}


def test_ci95_half_width_known_value():
    # std(ddof=1) of 1..5 is sqrt(2.5); t_{0.975, 4} = 2.776445105.
    assert ci95_half_width([1, 2, 3, 4, 5]) == pytest.approx(
        2.776445105 * math.sqrt(2.5) / math.sqrt(5), rel=1e-8
    )
    assert math.isnan(ci95_half_width([0.7]))


def _run(name, task_scores, higher=True):
    return {
        "model": name,
        "tasks": {
            t: {
                "metric": "top1_acc",
                "scores": s,
                "mean": float(np.mean(s)),
                "ci95": ci95_half_width(s),
                "higher_is_better": higher,
            }
            for t, s in task_scores.items()
        },
    }


def test_overall_score_min_max_normalisation():
    a = _run("A", {"t1": [0.8, 0.8], "t2": [0.5, 0.7]})
    b = _run("B", {"t1": [0.6, 0.6], "t2": [0.7, 0.7]})
    sa, sb = overall_scores([a, b])
    # Bounds from the means: t1 in [0.6, 0.8], t2 in [0.6, 0.7].
    # A per seed: t1 -> 1, 1; t2 -> -1, 1  => s = 0, 100.  B: t1 -> 0, 0; t2 -> 1, 1 => 50, 50.
    assert sa["scores"] == pytest.approx([0.0, 100.0])
    assert sb["scores"] == pytest.approx([50.0, 50.0])
    assert sa["mean"] == pytest.approx(50.0)
    # Explicit bounds (e.g. a wider comparison set) replace the runs' own min/max.
    (sa2,) = overall_scores([a], bounds={"t1": (0.0, 1.0), "t2": (0.0, 1.0)})
    assert sa2["scores"] == pytest.approx([100 * (0.8 + 0.5) / 2, 100 * (0.8 + 0.7) / 2])
    table = results_table([a, b])
    assert "| Model | t1 | t2 | s(m) |" in table
    # Issue #13.4: intervals are clipped to the score's range (half-widths 127.1 and 635.3
    # before), and the note says how s(m) was normalised and over which models.
    assert "| A | 80.0 ± 0.0 | 60.0 [0.0, 100.0] | 50.0 [0.0, 100.0] |" in table
    assert "among the 2 compared models (A, B)" in table and "2 seeds" in table
    assert sa["ci_low"] == 0.0 and sa["ci_high"] == 100.0
    assert sa["ci95"] == pytest.approx(12.706204736 * np.std([0.0, 100.0], ddof=1) / np.sqrt(2))
    (one,) = overall_scores(
        [_run("A", {"t1": [0.8], "t2": [0.5]})], bounds={"t1": (0, 1), "t2": (0, 1)}
    )
    assert (
        math.isnan(one["ci_low"])
        and "±"
        not in results_table(
            [_run("A", {"t1": [0.8], "t2": [0.5]})], bounds={"t1": (0, 1), "t2": (0, 1)}
        ).splitlines()[2]
    )


def test_event_metrics_match_sed_eval():
    """Cross-check against sed_eval (what heareval calls) on random events. sed_eval is not a
    project dependency (it pulls dcase_util and librosa) but the test extra installs it, and
    its absence fails this test (see independent_references)."""
    sed_eval = reference("sed_eval")
    dcase_util = reference("dcase_util")
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]
    for _ in range(50):
        ref, est = {}, {}
        for f in ("f1", "f2", "f3"):
            for d in (ref, est):
                # Half the onsets on a 50 ms grid, so that some differ by exactly the collar.
                starts = [
                    float(rng.integers(0, 180) * 50)
                    if rng.random() < 0.5
                    else float(rng.uniform(0, 9000))
                    for _ in range(rng.integers(0, 6))
                ]
                d[f] = [ev(s, s + rng.uniform(10, 2500), labels[rng.integers(3)]) for s in starts]
        event = sed_eval.sound_event.EventBasedMetrics(
            event_label_list=labels,
            evaluate_onset=True,
            evaluate_offset=False,
            t_collar=0.2,
            percentage_of_length=0.5,
        )
        segment = sed_eval.sound_event.SegmentBasedMetrics(
            event_label_list=labels, time_resolution=1.0
        )
        for f in ref:

            def container(events, f=f):
                return dcase_util.containers.MetaDataContainer(
                    [
                        {
                            "filename": f,
                            "event_label": e["label"],
                            "onset": e["start"] / 1000,
                            "offset": e["end"] / 1000,
                        }
                        for e in events
                    ]
                )

            event.evaluate(
                reference_event_list=container(ref[f]), estimated_event_list=container(est[f])
            )
            segment.evaluate(
                reference_event_list=container(ref[f]), estimated_event_list=container(est[f])
            )
        assert M.event_onset_fmeasure(est, ref) == pytest.approx(
            event.results()["overall"]["f_measure"]["f_measure"], abs=1e-9, nan_ok=True
        )
        assert M.segment_error_rate(est, ref) == pytest.approx(
            segment.results()["overall"]["error_rate"]["error_rate"], abs=1e-9
        )


def test_overall_score_skips_undefined_tasks():
    a = _run("A", {"t1": [0.8, 0.8], "t2": [0.5, 0.7]})
    b = _run("B", {"t1": [0.6, 0.6], "t2": [0.7, 0.7]})
    b["tasks"]["t2"].update(scores=[None, None], mean=None, ci95=None)  # NaN as stored in JSON
    sa, sb = overall_scores([a, b])
    assert sa["tasks"] == ["t1"] and sa["scores"] == pytest.approx([100.0, 100.0])
    assert sb["scores"] == pytest.approx([0.0, 0.0])
    assert "| B | 60.0 ± 0.0 | — | 0.0 ± 0.0 |" in results_table([a, b])
    b["tasks"]["t2"].update(scores=[0.7, math.inf], mean=math.inf)  # a run still in memory
    sa, sb = overall_scores([a, b])
    assert sa["tasks"] == ["t1"] and sb["scores"] == pytest.approx([0.0, 0.0])


def test_chroma_and_pitch_accuracy_hand_worked():
    # 25 classes (indices = consecutive pitches). Row 0: predicts 14, target 2 -> same chroma;
    # row 1: predicts 3, target 3 -> exact; row 2: predicts 5, target 6 -> wrong.
    scores = np.zeros((3, 25))
    scores[0, 14] = scores[1, 3] = scores[2, 5] = 1.0
    targets = np.zeros((3, 25))
    targets[0, 2] = targets[1, 3] = targets[2, 6] = 1.0
    assert M.METRICS["chroma_acc"].fn(scores, targets) == pytest.approx(2 / 3)
    assert M.METRICS["pitch_acc"].fn(scores, targets) == pytest.approx(1 / 3)


def test_auc_and_d_prime_are_nan_when_a_class_has_no_positive():
    # heareval wraps roc_auc_score(average=None) in try/except ValueError -> NaN.
    s = np.array([[0.1, 0.2], [0.4, 0.3], [0.35, 0.9], [0.8, 0.1]])
    t = np.array([[0, 0], [0, 0], [1, 0], [1, 0]])
    assert math.isnan(M.d_prime(s, t))
    assert math.isnan(M.auc_roc(s, t))


def test_onset_offset_fmeasure_hand_worked():
    # Collar 50 ms on onsets; offsets within max(50 ms, 20% of the reference length).
    ref = {"f": [ev(0, 1000, "a"), ev(2000, 2100, "a"), ev(3000, 4000, "b")]}
    est = {
        "f": [
            ev(40, 1190, "a"),  # onset 40 ms off, offset 190 <= 200 (20% of 1000): hit
            ev(2000, 2070, "a"),  # offset 30 ms off <= max(50, 20): hit
            ev(3000, 4300, "b"),  # offset 300 > 200: miss
            ev(2010, 2101, "b"),  # label b has no reference there: miss
        ]
    }
    assert M.event_onset_counts(est, ref, 50.0, 0.2) == (2, 4, 3)
    p, r = 2 / 4, 2 / 3
    fn = M.METRICS["event_onset_offset_50ms_20perc_fms"].fn
    assert fn(est, ref) == pytest.approx(2 * p * r / (p + r))
    # Onset-only at 50 ms counts the third one as a hit.
    assert M.event_onset_counts(est, ref, 50.0) == (3, 4, 3)


def _sed_eval_f(est, ref, labels, **params):
    sed_eval = reference("sed_eval")
    from dcase_util.containers import MetaDataContainer

    def container(x):
        return MetaDataContainer(
            [
                {
                    "event_label": e["label"],
                    "event_onset": e["start"] / 1000.0,
                    "event_offset": e["end"] / 1000.0,
                    "file": f,
                }
                for f, evs in x.items()
                for e in evs
            ]
        )

    metric = sed_eval.sound_event.EventBasedMetrics(event_label_list=labels, **params)
    r, e = container(ref), container(est)
    for f in est:
        metric.evaluate(
            reference_event_list=r.filter(filename=f), estimated_event_list=e.filter(filename=f)
        )
    return metric.results_overall_metrics()["f_measure"]["f_measure"]


def test_onset_offset_matches_sed_eval():
    rng = np.random.default_rng(5)

    def random_events(n):
        out = {}
        for f in ("x", "y"):
            starts = rng.integers(0, 9000, n)
            out[f] = [ev(s, s + rng.integers(30, 800), "ab"[rng.integers(2)]) for s in starts]
        return out

    ref = random_events(12)
    est = {
        f: [
            ev(e["start"] + rng.integers(-60, 60), e["end"] + rng.integers(-150, 150), e["label"])
            for e in evs
        ]
        for f, evs in ref.items()
    }
    ours = M.METRICS["event_onset_offset_50ms_20perc_fms"].fn(est, ref)
    theirs = _sed_eval_f(
        est,
        ref,
        ["a", "b"],
        evaluate_onset=True,
        evaluate_offset=True,
        t_collar=0.05,
        percentage_of_length=0.2,
    )
    assert ours == pytest.approx(theirs)


def test_compare_json_of_single_seed_runs_is_valid_json(tmp_path):
    from mwmae.evaluation.report import compare, write_run

    paths = []
    for name, score in (("A", 0.8), ("B", 0.6)):
        run = _run(name, {"t1": [score], "t2": [1.0 - score]})
        paths.append(write_run(run, tmp_path / name)[0])
    compare(paths, out_dir=tmp_path / "cmp")

    def refuse(constant):
        raise AssertionError(f"compare.json holds {constant}, which is not JSON")

    text = (tmp_path / "cmp" / "compare.json").read_text()
    summary = json.loads(text, parse_constant=refuse)
    assert [s["model"] for s in summary] == ["A", "B"] and summary[0]["s_m"]["ci95"] is None
