"""Task images: real HTTP downloads from a loopback server (allowed by the policy here), EXIF orientation,
pixel limit, cache folder. The policy itself: test_media_policy.py."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segagent_backend.errors import MediaError
from segagent_backend.media import MediaLoader, MediaPolicy, MediaSource, load_image_file

# the test image server is on 127.0.0.1; /setup's host (a per-request source) is trusted here
LOOPBACK = MediaPolicy.build("127.0.0.1", allow_private=True, trust_setup=True)


@pytest.fixture
def loader(tmp_path):
    return MediaLoader(tmp_path / "cache", max_pixels=1_000_000, timeout=5, policy=LOOPBACK)


def test_http_download_is_cached_in_the_cache_dir(loader, media_server, disk_image, tmp_path):
    image = loader.load(f"{media_server}/disk.png")
    assert image.dtype == np.uint8 and image.shape == (120, 160, 3)
    assert np.array_equal(image, disk_image[0])
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_exif_orientation_is_applied(media_dir, media_server, loader):
    # stored 40 wide x 20 high with orientation 6 (rotate 90 CW to display): shown 20 wide x 40 high
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the stored image's left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(media_dir / "rotated.jpg", exif=exif, quality=95)
    image = loader.load(f"{media_server}/rotated.jpg")
    assert image.shape == (40, 20, 3)
    assert image[:10].mean() > 200 and image[-10:].mean() < 50  # the band is now on top


def test_pixel_limit(media_dir, media_server, tmp_path):
    Image.new("RGB", (200, 100)).save(media_dir / "big.png")
    small = MediaLoader(tmp_path / "c", max_pixels=10_000, timeout=5, policy=LOOPBACK)
    with pytest.raises(MediaError, match="SEGAGENT_MAX_IMAGE_PIXELS") as err:
        small.load(f"{media_server}/big.png")
    assert err.value.status == 413


def test_label_studio_upload_uses_hostname_and_token(loader, media_dir, media_server):
    # an upload path is resolved against Label Studio's host: /data/upload/<project>/<file>
    (media_dir / "data" / "upload" / "3").mkdir(parents=True)
    Image.new("RGB", (8, 6), (10, 20, 30)).save(media_dir / "data" / "upload" / "3" / "up.png")
    image = loader.load("/data/upload/3/up.png", 5, MediaSource(media_server, "token"))
    assert image.shape == (6, 8, 3) and tuple(image[0, 0]) == (10, 20, 30)


def test_cloud_url_without_task_id_is_a_clear_error(loader, media_server):
    with pytest.raises(MediaError, match="Task ID"):
        loader.load("s3://bucket/x.png", None, MediaSource(media_server, "token"))


def test_local_file_errors(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        load_image_file(tmp_path / "none.png", 100)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(MediaError, match="not a readable image"):
        load_image_file(tmp_path / "text.png", 100)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    Image.new("L", (4, 3), 7).save(tmp_path / "g.png")
    Image.new("RGBA", (4, 3), (1, 2, 3, 4)).save(tmp_path / "a.png")
    assert load_image_file(tmp_path / "g.png", 100).shape == (3, 4, 3)
    assert tuple(load_image_file(tmp_path / "a.png", 100)[0, 0]) == (1, 2, 3)
