"""Label config translation with the SDK's LabelInterface."""
from __future__ import annotations

import pytest

from payloads import CONFIG
from segagent_backend.labelstudio.config import EXAMPLE_CONFIG, ConfigError, parse_label_config


def test_the_protocol_docs_sam_config():
    config = parse_label_config(CONFIG)
    assert (config.image_name, config.image_field) == ("image", "image")
    assert config.brush.name == "tag" and config.brush.labels == ["Banana", "Apple"]
    assert config.clicks.name == "tag2" and config.box.name == "tag3" and config.trajectory is None
    assert config.expression_field == "expression" and config.interactive


def test_example_config_has_every_part():
    config = parse_label_config(EXAMPLE_CONFIG)
    assert config.trajectory.name == "trajectory" and config.clicks.name == "click"


def test_smart_on_the_control_or_on_a_label():
    on_control = ('<View><Image name="im" value="$photo"/><BrushLabels name="b" toName="im"><Label value="A"/>'
                  '</BrushLabels><KeyPointLabels name="k" toName="im" smartOnly="true"><Label value="A"/>'
                  '</KeyPointLabels></View>')
    config = parse_label_config(on_control)
    assert config.clicks.name == "k" and config.trajectory is None and config.image_field == "photo"


def test_plain_keypoints_are_the_trajectory_control():
    xml = ('<View><Image name="im" value="$img"/><BrushLabels name="b" toName="im"><Label value="A"/></BrushLabels>'
           '<KeyPointLabels name="t" toName="im"><Label value="pos"/><Label value="neg"/></KeyPointLabels></View>')
    config = parse_label_config(xml)
    assert config.trajectory.name == "t" and config.clicks is None and not config.interactive


def test_expression_source_order():
    xml = ('<View><Image name="im" value="$img"/><Header value="$caption"/><BrushLabels name="b" toName="im">'
           '<Label value="the cat"/></BrushLabels></View>')
    assert parse_label_config(xml).expression_field == "caption"
    assert parse_label_config(xml, expression_field="sentence").expression_field == "sentence"
    no_text = xml.replace('<Header value="$caption"/>', "")
    assert parse_label_config(no_text).expression_field is None  # the brush label's own text is used


def test_controls_on_another_image_are_ignored():
    xml = ('<View><Image name="a" value="$a"/><Image name="b" value="$b"/>'
           '<BrushLabels name="m" toName="b"><Label value="X"/></BrushLabels>'
           '<KeyPointLabels name="k" toName="a" smart="true"><Label value="X"/></KeyPointLabels></View>')
    config = parse_label_config(xml)
    assert config.image_name == "b" and config.clicks is None


@pytest.mark.parametrize("xml,problem", [
    ("", "empty"),
    ("<View><Image", "not valid XML"),
    ('<View><Text name="t" value="$t"/></View>', "no <Image>"),
    ('<View><Image name="i" value="$i"/><RectangleLabels name="r" toName="i"><Label value="A"/></RectangleLabels></View>',
     "no <BrushLabels>"),
])
def test_configs_that_cannot_work(xml, problem):
    with pytest.raises(ConfigError) as err:
        parse_label_config(xml)
    assert problem in err.value.message and EXAMPLE_CONFIG in err.value.message and err.value.status == 400
