"""Reports and plots stay readable at 500 clients: aggregates + the largest clients, stated."""

import numpy as np
from PIL import Image

from hfedmoe.report.run_report import MAX_CLIENT_ROWS, write_run_report


def test_500_client_report_is_bounded(tmp_path):
    rng = np.random.default_rng(0)
    n, L, E = 500, 2, 4
    rows = [{"round": 0, "method": "hfedmoe", "test_accuracy": 0.5, "test_loss": 0.7, "train_loss": None,
             "sim_time_s": 0.0, "wall_time_s": 1.0, "upload_bytes": 0, "download_bytes": 0, "failed_clients": []}]
    for r in (1, 2):
        rows.append({**rows[0], "round": r, "test_accuracy": 0.6 + 0.05 * r, "train_loss": 0.6,
                     "test_macro_f1": 0.6, "test_class_accuracy": [0.7, 0.5], "test_pred_share": [0.6, 0.4],
                     "sim_time_s": 10.0 * r, "wall_time_s": 4000.0 * r,
                     "client_usage": {str(c): rng.random((L, E)).round(3).tolist() for c in range(n)},
                     "client_trained": {str(c): rng.integers(0, 2, (L, E)).tolist() for c in range(n)}})
    (tmp_path / "metrics.jsonl").write_text("\n".join(__import__("json").dumps(r) for r in rows) + "\n")
    clients = [{"client_id": c, "profile": "phone-flagship", "num_train": int(5 + c % 37), "num_val": 1,
                "budget": 1 + c % 4, "fits_full": c % 4 == 3, "name": f"movie{c}"} for c in range(n)]
    summary = write_run_report(tmp_path, {"clients": clients, "majority_rate": 0.6, "label_names": ["a", "b"],
                                          "model": "m", "dataset": "d"})
    report = (tmp_path / "report.md").read_text()
    assert len(report.splitlines()) < 120
    assert f"The table lists the {MAX_CLIENT_ROWS} largest clients" in report and "500 clients" in report
    assert "wall time 2 h 13 min 20 s" in report and "macro-F1" in report
    assert summary["final_test_macro_f1"] == 0.6
    for name in ("usage_heatmap.png", "trained_heatmap.png"):
        w, h = Image.open(tmp_path / name).size
        assert h < 3000 and w < 3000, (name, w, h)
