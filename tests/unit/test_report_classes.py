from hfedmoe.report.classes import class_metrics, human_duration, learning_warnings


def test_class_metrics_by_hand():
    # true 0: 8 right, 2 predicted 1; true 1: 3 predicted 0, 7 right
    m = class_metrics([[8, 2], [3, 7]])
    assert m["class_accuracy"] == [0.8, 0.7]
    p0, r0 = 8 / 11, 0.8
    p1, r1 = 7 / 9, 0.7
    f0, f1 = 2 * p0 * r0 / (p0 + r0), 2 * p1 * r1 / (p1 + r1)
    assert abs(m["macro_f1"] - (f0 + f1) / 2) < 1e-12
    assert m["pred_share"] == [11 / 20, 9 / 20] and m["class_support"] == [10, 10]


def test_one_class_model_gets_zero_f1_for_the_other_and_warnings():
    m = class_metrics([[0, 40], [0, 60]])
    assert m["class_accuracy"] == [0.0, 1.0] and m["class_f1"][0] == 0.0
    assert abs(m["macro_f1"] - 0.5 * (2 * 0.6 / 1.6)) < 1e-12
    w = learning_warnings(0.6, 0.6, m["pred_share"], ["neg", "pos"])
    assert len(w) == 2 and "'pos' for 100.0%" in w[0] and "majority-class rate 60.0%" in w[1]
    assert "train.loss = 'logit-adjusted'" in w[0] and "train.local_epochs" in w[1]  # each says what to try
    assert learning_warnings(0.8, 0.6, [0.5, 0.5]) == []


def test_absent_class_is_not_averaged():
    m = class_metrics([[5, 0, 0], [0, 5, 0], [0, 0, 0]])
    assert m["class_accuracy"][2] is None and m["macro_f1"] == 1.0


def test_human_duration():
    assert human_duration(42.31) == "42.3 s"
    assert human_duration(473) == "7 min 53 s"
    assert human_duration(3725.4) == "1 h 2 min 5 s"
