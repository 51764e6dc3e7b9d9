from pathlib import Path

import pytest
import yaml

from avray.config import Config, ConfigError, load_config, with_overrides


def test_defaults_match_the_clip_contract():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.data.num_frames == 16 and cfg.data.frame_size == 64
    assert cfg.data.num_samples == 32_000
    assert list(cfg.objectives.enabled()) == ["infonce"]  # the default recipe, docs/recipe.md


def test_yaml_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nobjectives:\n  xdc:\n    weight: 0.5\n")
    cfg = load_config(
        path, ["train.lr=0.01", "data.extensions=.mp4,.mkv", "train.use_gpu=false", "data.decode_concurrency=null"]
    )
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01
    assert cfg.objectives.xdc.weight == 0.5 and set(cfg.objectives.enabled()) == {"infonce", "xdc"}
    assert cfg.data.extensions == (".mp4", ".mkv")
    assert cfg.train.use_gpu is False and cfg.data.decode_concurrency is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochz=3", "unknown config key train.epochz"),
        ("trian.epochs=3", "unknown config key trian"),
        ("train.epochs=three", "train.epochs must be an integer"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("objectives.xdc.variant=bogus", "objectives.xdc.variant must be one of"),
        ("objectives.infonce.weight=-1", "objectives.infonce.weight must be >= 0"),
        ("data.sampling=sometimes", "data.sampling must be one of"),
        ("train.epochs", "--set expects key=value"),
        # Not finite: nothing downstream can train with it.
        ("train.lr=inf", "train.lr must be a finite number, got 'inf'"),
        ("train.lr=.inf", "train.lr must be a finite number"),
        ("data.fps=inf", "data.fps must be a finite number"),
        ("data.clip_seconds=nan", "data.clip_seconds must be a finite number"),
        ("objectives.infonce.temperature=-inf", "objectives.infonce.temperature must be a finite number"),
        ("objectives.infonce.weight=inf", "objectives.infonce.weight must be a finite number"),
        # YAML 1.1 reads these as 16, 8, 3 and 90: numbers nobody typed.
        ("train.epochs=0x10", "train.epochs must be an integer, got '0x10'"),
        ("train.epochs=0o10", "train.epochs must be an integer, got '0o10'"),
        ("train.epochs=0b11", "train.epochs must be an integer, got '0b11'"),
        ("train.epochs=1:30", "train.epochs must be an integer, got '1:30'"),
        # A trial trains on one device: a second GPU it reserved would sit idle.
        ("tune.gpus_per_trial=2", "tune.gpus_per_trial=2: a trial trains on one GPU"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace(".", r"\.")):
        load_config(None, [override])


def test_a_config_file_refuses_non_decimal_and_non_finite_numbers_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 0x10\n")
    with pytest.raises(ConfigError, match="train.epochs must be an integer, got '0x10'"):
        load_config(path)
    path.write_text("train:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match="train.lr must be a finite number"):
        load_config(path)
    path.write_text("train:\n  epochs: 12\n  lr: 1.0e-3\n")
    assert load_config(path).train.epochs == 12 and load_config(path).train.lr == 0.001


def test_an_empty_mixture_is_refused():
    with pytest.raises(ConfigError, match="at least one of objectives"):
        load_config(None, ["objectives.infonce.weight=0", "objectives.fused.weight=0"])


def test_missing_or_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_with_overrides_round_trips_and_revalidates():
    cfg = load_config()
    changed = with_overrides(cfg, {"objectives.dcca.weight": 0.3, "train.lr": 0.5})
    assert changed.objectives.dcca.weight == 0.3 and changed.train.lr == 0.5
    assert cfg.train.lr != 0.5  # frozen original untouched
    with pytest.raises(ConfigError):
        with_overrides(cfg, {"train.nope": 1})
    assert (
        load_config(
            None, [f"{k}={v}" for k, v in changed.flat().items() if v is not None and not isinstance(v, list)]
        ).flat()
        == changed.flat()
    )


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "workflows" / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_load_and_validate(path):
    cfg = load_config(path)  # validates: a typo or a bad value raises ConfigError

    def same(node, written: dict, prefix: str) -> None:
        for key, value in written.items():
            if isinstance(value, dict):
                same(getattr(node, key), value, f"{prefix}{key}.")
            else:
                got = getattr(node, key)
                assert (list(got) if isinstance(got, tuple) else got) == value, prefix + key

    same(cfg, yaml.safe_load(path.read_text()), "")


def test_the_written_out_defaults_are_the_defaults():
    """workflows/configs/default.yaml says it writes the defaults out: every key it sets must
    hold the dataclasses' default."""
    import yaml

    written = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflows/configs/default.yaml").read_text())
    defaults = Config().to_dict()
    differ = []

    def compare(prefix: str, mine: dict, theirs: dict) -> None:
        for key, value in mine.items():
            if isinstance(value, dict):
                compare(f"{prefix}{key}.", value, theirs[key])
            elif value != (list(theirs[key]) if isinstance(theirs[key], tuple) else theirs[key]):
                differ.append(f"{prefix}{key}: default.yaml {value!r}, default {theirs[key]!r}")

    compare("", written, defaults)
    assert not differ, differ
