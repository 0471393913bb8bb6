"""TriPlaneGenerator: mapping -> deeper StyleGAN2 backbone -> tri-planes -> decoder -> volume rendering -> super-resolution."""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint

from torch_utils.ops import grid_sample_gradfix, mlp, plane_sample
from training.networks_common import resize_image
from training.networks_stylegan2 import FullyConnectedLayer, MappingNetwork, SynthesisNetwork
from training.superresolution import SuperResolution
from training.volumetric_rendering import Cameras, VolumeRenderer, activate_density, sample_sphere_cameras, \
    sample_view_sets

__all__ = [
    "PLANE_AXES",
    "project_onto_planes",
    "sample_from_planes",
    "sample_mean_from_planes",
    "TriPlaneDecoder",
    "TriPlaneGenerator",
    "DEFAULT_RENDERING_KWARGS",
    "CAMERA_KEYS",
]

# Plane k holds the world axes PLANE_AXES[k] as its (width, height) = grid_sample (x, y) coordinates.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))  # XY, XZ, YZ

# Camera-sampling keys of rendering_kwargs; every other key goes to VolumeRenderer.
CAMERA_KEYS = ("radius", "fov_deg", "perturb_pos", "perturb_lookat", "look_at_point", "elevation_range_deg")

# EG3D-like defaults: the object box [-0.5, 0.5]^3 seen from radius 2.7 with an 18.837-degree field of view
# (the box just fills the image); cameras uniform over the whole sphere, as the paper samples them.
DEFAULT_RENDERING_KWARGS: Dict[str, Any] = dict(
    num_coarse=48, num_fine=48, ray_start="auto", ray_end=None, box_size=1.0, density_activation="softplus",
    density_noise=0.0, white_back=False, chunk=None, sample_mult=1.0, perturb=True,
    radius=2.7, fov_deg=18.837, perturb_pos=0.0, perturb_lookat=0.0, look_at_point=(0.0, 0.0, 0.0),
    elevation_range_deg=(-90.0, 90.0),
)

# EG3D trains its backbone in fp32; the clamp is a harmless safety net there and needed with fp16.
DEFAULT_BACKBONE_KWARGS: Dict[str, Any] = dict(channel_base=32768, channel_max=512, num_fp16_res=0, conv_clamp=256)
DEFAULT_SR_KWARGS: Dict[str, Any] = dict(channel_base=16384, channel_max=256, num_fp16_res=4, conv_clamp=256,
                                         antialias=True, use_noise=False, noise_mode="none")


def project_onto_planes(points: torch.Tensor, box_size: float) -> torch.Tensor:
    """Points [B,M,3] in world units -> plane coordinates [B,3,M,2] in [-1,1] over the box.

    Plane 0 (XY) gets (x, y), plane 1 (XZ) gets (x, z), plane 2 (YZ) gets (y, z); the first
    coordinate indexes the plane's width (columns), the second its height (rows), as in
    ``F.grid_sample``. The box [-box_size/2, box_size/2]^3 maps onto [-1, 1].
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be [B,M,3], got {tuple(points.shape)}")
    if box_size <= 0:
        raise ValueError(f"box_size must be positive, got {box_size}")
    scaled = points * (2.0 / box_size)
    # Each pair of axes as a strided view (a:b+1:b-a), not an index list: advanced indexing
    # gathers element by element, several times slower on these [B, M, 3] tensors.
    return torch.stack([scaled[..., a:b + 1:b - a] for a, b in PLANE_AXES], dim=1)


def sample_from_planes(planes: torch.Tensor, points: torch.Tensor, box_size: float) -> torch.Tensor:
    """Bilinear features of each plane at the points: planes [B,3,C,R,R], points [B,M,3] -> [B,3,M,C].

    Zero outside the box (grid_sample zero padding, align_corners=False). Uses the
    double-differentiable grid sampler so gradient penalties can flow through the planes.
    """
    return _sample_channels_first(planes, points, box_size).permute(0, 1, 3, 2)


def sample_mean_from_planes(planes: torch.Tensor, points: torch.Tensor, box_size: float,
                            impl: Optional[str] = None) -> torch.Tensor:
    """The mean over the three planes of `sample_from_planes`: [B,M,C] (the decoder's input).

    On a CPU and on a GPU this is one fused kernel (`torch_utils.ops.plane_sample`; on a CPU
    1.7x faster forward and backward than grid_sample + mean + transpose at eg3d-small's size,
    on an H100 2.2x); `impl='ref'` forces the grid_sample path (differentiable twice, gradients for the points too).
    """
    _check_planes(planes, points)
    coords = project_onto_planes(points, box_size).to(planes.dtype)  # [B,3,M,2]
    return plane_sample.sample_mean(planes, coords, impl=impl)


def _sample_channels_first(planes: torch.Tensor, points: torch.Tensor, box_size: float) -> torch.Tensor:
    """planes [B,3,C,R,R], points [B,M,3] -> features [B,3,C,M]."""
    _check_planes(planes, points)
    b, _, c, h, w = planes.shape
    coords = project_onto_planes(points, box_size).to(planes.dtype)  # [B,3,M,2]
    grid = coords.reshape(b * 3, -1, 1, 2)
    out = grid_sample_gradfix.grid_sample(planes.reshape(b * 3, c, h, w), grid)  # [B*3, C, M, 1]
    return out.reshape(b, 3, c, -1)


def _check_planes(planes: torch.Tensor, points: torch.Tensor) -> None:
    if planes.ndim != 5 or planes.shape[1] != 3:
        raise ValueError(f"planes must be [B,3,C,R,R], got {tuple(planes.shape)}")
    if points.shape[0] != planes.shape[0]:
        raise ValueError(f"points batch {points.shape[0]} does not match planes batch {planes.shape[0]}")


class TriPlaneDecoder(nn.Module):
    """MLP from the aggregated plane feature to (raw density, features).

    ``num_layers`` FC layers: C->hidden, (num_layers-2) x hidden->hidden, hidden->1+out_features,
    softplus between them. The paper's decoder has 4 layers; 2 gives EG3D's. The density is
    raw (the renderer applies its activation, softplus(raw - 1) by default). The features are
    squashed to [-1-2e, 1+2e] (e = 0.001): sigmoid rescaled to the GAN's image range with a
    small margin so that +-1 (and the renderer's white background +1) are reachable with
    finite logits; the first 3 are the colour.
    """

    CHECKPOINT_POINTS = 65536  # points per batch item in one checkpointed chunk

    def __init__(self, in_features: int, hidden: int = 64, out_features: int = 32, num_layers: int = 4,
                 lr_multiplier: float = 1.0, checkpoint: bool = False) -> None:
        super().__init__()
        # checkpoint: keep only the input for the backward and recompute the hidden layers
        # there (torch.utils.checkpoint), chunk by chunk of CHECKPOINT_POINTS points, so that
        # one chunk's hidden activations exist at a time; for one more forward pass of the MLP.
        self.checkpoint = checkpoint
        if num_layers < 1:
            raise ValueError(f"decoder_layers must be >= 1, got {num_layers}")
        if out_features < 3:
            raise ValueError(f"decoder out_features must be >= 3 (RGB first), got {out_features}")
        self.in_features, self.hidden, self.out_features, self.num_layers = in_features, hidden, out_features, num_layers
        sizes = [in_features] + [hidden] * (num_layers - 1) + [1 + out_features]
        self.layers = nn.ModuleList(FullyConnectedLayer(sizes[i], sizes[i + 1], lr_multiplier=lr_multiplier)
                                    for i in range(num_layers))

    def forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """features [B,M,in] -> (raw density [B,M,1], features [B,M,out])."""
        if self.checkpoint and torch.is_grad_enabled():
            parts = [torch.utils.checkpoint.checkpoint(self._forward, chunk, use_reentrant=False)
                     for chunk in features.split(self.CHECKPOINT_POINTS, dim=1)]
            return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)
        return self._forward(features)

    def _forward(self, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # The layers' effective (equalised-lr) weights through softplus_mlp: one C++ kernel on
        # a CPU (all layers per tile of points in cache), PyTorch ops elsewhere.
        weights = [layer.weight.to(features.dtype) * layer.weight_gain for layer in self.layers]
        biases = [layer.bias.to(features.dtype) * layer.bias_gain for layer in self.layers]
        eps = 1e-3
        x = mlp.softplus_mlp(features, weights, biases, squash=(1, 2.0 + 4.0 * eps, 1.0 + 2.0 * eps))
        sigma, rgb = x.split([1, x.shape[-1] - 1], dim=-1)  # backward: one cat, not two zero-filled scatters
        return sigma, rgb


def _merge(defaults: Dict[str, Any], overrides: Optional[Dict[str, Any]], name: str) -> Dict[str, Any]:
    merged = copy.deepcopy(defaults)
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise ValueError(f"unknown key {key!r} in {name}; known: {sorted(defaults)}")
        merged[key] = value
    return merged


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class TriPlaneGenerator(nn.Module):
    """Class-conditional tri-plane generator. No camera pose enters the mapping or the backbone.

    Tri-planes: the backbone's [B, 3*C, R, R] output viewed as [B, 3, C, R, R] (planes XY, XZ,
    YZ, see ``project_onto_planes``). A point's feature is the MEAN of its three bilinear plane
    samples (the paper's text says summation; EG3D and we use the mean, which only rescales the
    decoder's first layer). Rendering: ``neural_res`` feature images, first 3 channels the raw
    RGB in [-1, 1], then super-resolution to ``img_res``. Outputs are item-major over views.
    """

    def __init__(self, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, triplane_res: int = 256,
                 triplane_channels: int = 32, neural_res: int = 64, img_res: int = 128, decoder_layers: int = 4,
                 decoder_hidden: int = 64, decoder_out: int = 32, decoder_lr_multiplier: float = 1.0,
                 decoder_checkpoint: bool = False, extra_blocks: bool = True, mapping_layers: int = 2,
                 mapping_kwargs: Optional[Dict[str, Any]] = None,
                 backbone_kwargs: Optional[Dict[str, Any]] = None, rendering_kwargs: Optional[Dict[str, Any]] = None,
                 sr_kwargs: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        rendering_kwargs = _merge(DEFAULT_RENDERING_KWARGS, rendering_kwargs, "rendering_kwargs")
        backbone_kwargs = _merge(DEFAULT_BACKBONE_KWARGS, backbone_kwargs, "backbone_kwargs")
        sr_kwargs = _merge(DEFAULT_SR_KWARGS, sr_kwargs, "sr_kwargs")
        mapping_kwargs = dict(mapping_kwargs or {})
        self.init_kwargs: Dict[str, Any] = _jsonable(dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, triplane_res=triplane_res, triplane_channels=triplane_channels,
            neural_res=neural_res, img_res=img_res, decoder_layers=decoder_layers, decoder_hidden=decoder_hidden,
            decoder_out=decoder_out, decoder_lr_multiplier=decoder_lr_multiplier,
            decoder_checkpoint=decoder_checkpoint, extra_blocks=extra_blocks,
            mapping_layers=mapping_layers, mapping_kwargs=mapping_kwargs, backbone_kwargs=backbone_kwargs,
            rendering_kwargs=rendering_kwargs, sr_kwargs=sr_kwargs))
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.triplane_res, self.triplane_channels = triplane_res, triplane_channels
        self.neural_res, self.img_res, self.img_channels = neural_res, img_res, 3
        self.rendering_kwargs = rendering_kwargs
        self.camera_kwargs = {k: rendering_kwargs[k] for k in CAMERA_KEYS}
        self.box_size = float(rendering_kwargs["box_size"])

        self.backbone = SynthesisNetwork(w_dim=w_dim, img_resolution=triplane_res, img_channels=3 * triplane_channels,
                                         extra_blocks=extra_blocks, **backbone_kwargs)
        self.num_ws = self.backbone.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      num_layers=mapping_layers, **mapping_kwargs)
        self.decoder = TriPlaneDecoder(triplane_channels, hidden=decoder_hidden, out_features=decoder_out,
                                       num_layers=decoder_layers, lr_multiplier=decoder_lr_multiplier,
                                       checkpoint=decoder_checkpoint)
        self.renderer = VolumeRenderer(**{k: v for k, v in rendering_kwargs.items() if k not in CAMERA_KEYS})
        self.superresolution = SuperResolution(decoder_out, neural_res=neural_res, img_res=img_res, w_dim=w_dim,
                                               **sr_kwargs)

    # -- pieces -----------------------------------------------------------------------------

    def planes(self, ws: torch.Tensor, noise_mode: str = "random", update_emas: bool = False,
               **block_kwargs) -> torch.Tensor:
        """ws -> tri-planes [B, 3, C, R, R] (for rendering, shape extraction and regularisers)."""
        img = self.backbone(ws, noise_mode=noise_mode, update_emas=update_emas, **block_kwargs)
        return img.view(img.shape[0], 3, self.triplane_channels, img.shape[-2], img.shape[-1])

    def sample_density(self, planes: torch.Tensor, points: torch.Tensor,
                       activate: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decoder at world points [B,M,3] -> (density [B,M,1], features [B,M,C_out]).

        The density is raw (what the renderer receives) unless ``activate``, which applies the
        renderer's density activation (non-negative sigma, e.g. for mesh extraction).
        """
        feats = sample_mean_from_planes(planes, points, self.box_size)
        sigma, features = self.decoder(feats)
        if activate:
            sigma = activate_density(sigma, self.renderer.density_activation)
        return sigma, features

    def sample_cameras(self, batch: int, views: int = 1, device=None,
                       generator: Optional[torch.Generator] = None) -> Cameras:
        """batch*views cameras from the rendering kwargs (item-major; views > 1: far apart in azimuth)."""
        if views == 1:
            return sample_sphere_cameras(batch, generator=generator, device=device, **self.camera_kwargs)
        return sample_view_sets(batch, views=views, generator=generator, device=device, **self.camera_kwargs)

    def _field(self, planes: torch.Tensor, views: int):
        """A renderer field over B*V cameras whose rows v*... of item b all read item b's planes."""
        def field(points: torch.Tensor, dirs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            del dirs  # the decoder is view-independent, as in EG3D
            n, m, _ = points.shape
            sigma, feats = self.sample_density(planes, points.reshape(n // views, views * m, 3))
            return sigma.reshape(n, m, 1), feats.reshape(n, m, -1)
        return field

    def synthesis(self, ws: torch.Tensor, cameras: Optional[Cameras] = None, views: int = 1,
                  neural_res: Optional[int] = None, noise_mode: str = "random", update_emas: bool = False,
                  sample_mult: Optional[float] = None, generator: Optional[torch.Generator] = None,
                  **block_kwargs) -> Dict[str, Any]:
        """ws [B, num_ws, w_dim] -> rendered views (see ``forward``). Given cameras must number B*V."""
        batch = ws.shape[0]
        if cameras is None:
            if views < 1:
                raise ValueError(f"views must be >= 1, got {views}")
            cameras = self.sample_cameras(batch, views, device=ws.device, generator=generator)
        else:
            if len(cameras) % batch != 0:
                raise ValueError(f"cameras: {len(cameras)} cameras for a batch of {batch} (need B*views, item-major)")
            views = len(cameras) // batch
            cameras = cameras.to(ws.device)
        res = self.neural_res if neural_res is None else int(neural_res)
        planes = self.planes(ws, noise_mode=noise_mode, update_emas=update_emas, **block_kwargs)
        out = self.renderer.render(self._field(planes, views), cameras, res, sample_mult=sample_mult,
                                   generator=generator)
        features = out["features"]
        sr_input = resize_image(features, self.superresolution.neural_res)
        ws_views = ws.repeat_interleave(views, dim=0) if views > 1 else ws
        # SR noise follows sr_kwargs['noise_mode'] (default: no noise layers at all), not the backbone's mode.
        image = self.superresolution(sr_input, ws_views, **block_kwargs)
        return dict(image=image, image_raw=features[:, :3], image_depth=out["depth"], opacity=out["opacity"],
                    features=features, cameras=cameras, ws=ws, planes=planes, views=views)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor], cameras: Optional[Cameras] = None, views: int = 1,
                truncation_psi: float = 1.0, truncation_cutoff: Optional[int] = None,
                neural_res: Optional[int] = None, update_emas: bool = False, noise_mode: str = "random",
                sample_mult: Optional[float] = None, generator: Optional[torch.Generator] = None,
                **block_kwargs) -> Dict[str, Any]:
        """(z, class) -> dict with, for B items and V views (item-major: item0 view0..V-1, item1 ...):
        image [B*V,3,img_res,img_res], image_raw [B*V,3,nr,nr] (both in about [-1,1]), image_depth and
        opacity [B*V,1,nr,nr], features [B*V,C_out,nr,nr], cameras (B*V), ws [B,num_ws,w_dim],
        planes [B,3,C,R,R], views (V). Without ``cameras``, V cameras per item are sampled."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, cameras=cameras, views=views, neural_res=neural_res, noise_mode=noise_mode,
                              update_emas=update_emas, sample_mult=sample_mult, generator=generator, **block_kwargs)
