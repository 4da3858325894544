"""``hparse train`` trains either top-down model from the command line (smoke profile)."""

import json

from hparse.cli import main


def test_train_attention_rcnn_from_the_command_line(tmp_path, tmp_results, capsys):
    code = main(["train", "--model", "attention_rcnn", "--attention", "dot_after_conv3_sum", "--profile", "smoke",
                 "--iterations", "1", "--out", str(tmp_path / "run")])
    assert code == 0
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["config"]["model"]["name"] == "attention_rcnn"
    assert record["config"]["model"]["attention"] == "dot_after_conv3_sum"
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert "training attention_rcnn" in capsys.readouterr().out


def test_train_rejects_flags_of_the_other_model(capsys):
    assert main(["train", "--model", "attention_rcnn", "--no-gce", "--profile", "smoke"]) == 2
    assert "do not apply to attention_rcnn" in capsys.readouterr().err
    assert main(["train", "--attention", "none", "--profile", "smoke"]) == 2
    assert "--model attention_rcnn only" in capsys.readouterr().err
