"""The config's one form (data.channel normalised to data.channels at parse time) and the one function that maps
a user's channels onto a model's (dsn evaluate, dsn predict)."""

from __future__ import annotations

import pytest

from dsn import config
from dsn.data.channels import channel_names
from dsn.errors import ConfigError
from dsn.workflows.evaluate import ChannelUse, channel_uses


def test_the_deprecated_channel_comes_out_of_parsing_as_channels(caplog):
    with caplog.at_level("WARNING", logger="dsn.config"):
        old = config.parse(["--config", "conf/demo.yaml", "--data.channel", "EEG Pz-Oz"])
    assert old.data.channels == ["EEG Pz-Oz"] and old.data.channel is None and old.net.n_chans == 1
    assert "data.channel is deprecated" in caplog.text
    new = config.parse(["--config", "conf/demo.yaml", "--data.channels", "[EEG Pz-Oz]"])
    assert config.training_items(old) == config.training_items(new)
    again = config.set_key(old, "data.channel", "EEG Fpz-Cz")  # the old key set anew replaces the channels
    assert again.data.channels == ["EEG Fpz-Cz"] and again.data.channel is None
    with pytest.raises(ConfigError, match="give only channels"):
        config.parse(["--config", "conf/demo.yaml", "--data.channels", "[EEG, EOG(L)]", "--data.channel", "EEG Pz-Oz"])


def test_derivations_are_spelt_one_way_and_stay_so():
    cfg = config.parse(["--config", "conf/demo.yaml", "--data.channels", "[C4-M1=C4-M1, ' EEG ']"])
    assert cfg.data.channels == ["C4-M1=C4 - M1", "EEG"] and cfg.net.n_chans == 2
    assert channel_names(cfg.data.channels) == ["C4-M1", "EEG"]
    assert config.set_key(cfg, "data.fold", 1).data.channels == cfg.data.channels


def test_a_logged_config_of_the_old_form_compares_equal():
    """A resumed fit compares today's config with the YAML its run logged (parsed without normalising)."""
    cfg = config.parse(["--config", "conf/demo.yaml", "--data.channel", "EEG Pz-Oz"])
    logged = config.default_parser().parse_object({**config.to_dict(cfg), "data": {
        **config.to_dict(cfg.data), "channels": ["EEG Fpz-Cz"], "channel": "EEG Pz-Oz"}})
    assert logged.data.channel == "EEG Pz-Oz"
    assert config.identity_items(logged) == config.identity_items(cfg)


def test_channel_uses_pairs_asked_channels_with_the_model_s():
    model = ["EEG Fpz-Cz", "EOG horizontal"]
    assert [u.asked for u in channel_uses(model, None)] == model
    uses = channel_uses(model, ["EEG", "EOG(L)"], source="a.edf", option="--channel")
    assert uses[1] == ChannelUse("EOG horizontal", "EOG(L)", "EOG(L)", "EOG(L)", False)
    assert [u.asked for u in channel_uses(["EEG Fpz-Cz"], "EEG C4-A1")] == ["EEG C4-A1"]
    with pytest.raises(ConfigError, match=r"^a\.edf: --channel names 1 channel\(s\) \(EEG\) but the model reads 2 "
                                          r"\(EEG Fpz-Cz, EOG horizontal\)"):
        channel_uses(model, ["EEG"], source="a.edf", option="--channel")


def test_channel_uses_finds_the_file_labels_and_names_another_montage():
    labels = ["EEG", "EOG(L)"]
    aliases = {"C4-A1": ["EEG"]}
    use = channel_uses(["EEG Fpz-Cz"], ["EEG"], labels, aliases, "b.edf")[0]
    assert use.read == "EEG" and use.montage == "C4-A1" and use.cross_montage
    assert "cross-montage check" in use.describe()
    with pytest.raises(ConfigError, match=r"^b\.edf: .*for the model's EEG Fpz-Cz\). .* with --data\.channels\.$"):
        channel_uses(["EEG Fpz-Cz"], None, labels, aliases, "b.edf")


def test_scorer_channels_reads_old_and_new_specs():
    from dsn.models import DeepFeatureNet, FeatureClassifierNet
    from dsn.models.scoring import SleepScorer

    net_cfg = {"n_filters_first": 8, "n_filters": 8}
    scorer = SleepScorer(FeatureClassifierNet(DeepFeatureNet(**net_cfg), 5), {"channel": "EEG Fpz-Cz", "sfreq": 100.0},
                         {"net": net_cfg})
    assert scorer.channels == ["EEG Fpz-Cz"]  # a spec with the one "channel" of older dsn versions
    scorer.preprocessing = {**scorer.preprocessing, "channels": ["EEG", "EOG(L)"]}
    assert scorer.channels == ["EEG", "EOG(L)"]
