"""The frame sampling a checkpoint was trained with is saved with it (the video processor's
record in processor_config.json) and is what eval, sft and train sample with by default."""

import json

from videoopd import eval as E
from videoopd import sft as S
from videoopd.data.annotations import load_annotations
from videoopd.data.video import PREPROCESSING_RECORD, DecodeConfig
from videoopd.demo.teacher import DEMO_PIXELS, STUDENT_DIR, evaluate_demo_checkpoint, generate_split
from videoopd.qwen.processing import load_processor, record_preprocessing
from videoopd.qwen.tiny import save_tiny_checkpoint


def test_recorded_settings_survive_saving_and_are_the_defaults(tmp_path):
    processor = load_processor(save_tiny_checkpoint(tmp_path, "qwen3_vl", hidden_size=32, num_layers=1))
    trained = DecodeConfig.for_processor(processor, fps=1.0, max_frames=64, min_pixels=2048, max_pixels=4096)
    assert DecodeConfig.for_processor(processor) != trained  # nothing recorded yet: the defaults
    record_preprocessing(processor, trained)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())["video_processor"]
    assert saved[PREPROCESSING_RECORD]["min_pixels"] == 2048 and saved["fps"] == 1.0
    loaded = load_processor(tmp_path)
    assert DecodeConfig.for_processor(loaded) == trained
    assert DecodeConfig.for_processor(loaded, fps=None, min_pixels=None) == trained  # None: not given
    overridden = DecodeConfig.for_processor(loaded, fps=2.0, max_pixels=8192)
    assert (overridden.fps, overridden.max_pixels, overridden.min_pixels) == (2.0, 8192, 2048)
    loaded.save_pretrained(tmp_path)  # loading and saving again keeps the record
    assert DecodeConfig.for_processor(load_processor(tmp_path)) == trained


def test_sft_saves_its_frame_sampling_with_the_model(tmp_path, synthetic_dir):
    out = tmp_path / "run"
    code = S.main(
        [
            "--init-tiny",
            "qwen3_vl",
            "--train-data",
            str(synthetic_dir / "annotations.jsonl"),
            "--output-dir",
            str(out),
            "--tiny-hidden-size",
            "32",
            "--tiny-layers",
            "1",
            "--max-steps",
            "1",
            "--per-device-train-batch-size",
            "2",
            "--warmup-steps",
            "0",
            "--fps",
            "1.5",
            "--min-pixels",
            str(64 * 96),
            "--max-pixels",
            str(64 * 96),
            "--no-progress",
        ]
    )
    assert code == 0
    config = DecodeConfig.for_processor(load_processor(out / "final"))
    assert (config.fps, config.min_pixels, config.max_pixels, config.max_frames) == (1.5, 64 * 96, 64 * 96, 768)


def test_eval_of_the_shipped_student_with_its_defaults_matches_the_demo_evaluation(tmp_path, capsys):
    annotations = generate_split(tmp_path / "heldout", 8, seed=5)
    records = load_annotations(annotations)[0]
    demo = evaluate_demo_checkpoint(STUDENT_DIR, records).metrics
    assert DecodeConfig.for_processor(load_processor(STUDENT_DIR)).max_pixels == DEMO_PIXELS
    output = tmp_path / "student.predictions.jsonl"
    assert (
        E.main(
            [
                "--model",
                str(STUDENT_DIR),
                "--data",
                str(annotations),
                "--output",
                str(output),
                "--no-progress",
                "--dataloader-num-workers",
                "0",
            ]
        )
        == 0
    )
    metrics = json.loads(output.with_name("student.predictions.metrics.json").read_text())["overall"]
    assert metrics["parsed"] == demo["parsed"] == len(records)
    assert metrics["mIoU"] == demo["mIoU"]
