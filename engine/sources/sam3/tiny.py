"""A tiny SAM3 image model built from the `sam3` package's own classes, for CPU tests and the
quick GPU check (`python -m bench.gpu_check --device cpu --quick`).

Same architecture and module names as `sam3.model_builder.build_sam3_image_model`, with
the widths and depths cut down: ViT 64-d x 2 layers, text 64-d x 1 layer, 1 encoder layer,
2 decoder layers; d_model 256 and 200 queries stay (the heads assume them). About 20M
parameters; at 224 px the feature grid is 16x16 and the masks 64x64.

The vision position encoding and the decoder are built with the same precompute and
`resolution`/`stride` arguments as the real builder, so the CUDA-only spots that
`engine.sources.sam3.compat` fixes are exercised here too. Like the package's builder it needs
`engine.sources.sam3.compat.apply_cpu_compat()` to have run first on a CPU-only machine;
`load_sam3_model(..., model_factory=build_tiny_sam3)` and `build_random_sam3_model` do that.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SIDE = 224
PATCH = 14
D_MODEL = 256  # the heads assume it
FFN = 256


def build_tiny_sam3(bpe_path: str | Path, image_size: int = TINY_SIDE) -> torch.nn.Module:
    """Random-weight tiny Sam3Image (eval mode, CPU). `image_size` must be a multiple of 14.

    The text encoder's `torch.empty` parameters are left as the package leaves them.
    """
    assert image_size % PATCH == 0, f"image_size must be a multiple of {PATCH}, got {image_size}"
    from sam3.model.sam3_image import Sam3Image

    # built in this order so that a seed gives the same random weights as it always did
    backbone, transformer = _backbone(bpe_path, image_size), _transformer(image_size)
    scoring, seg_head, geometry = _scoring(), _segmentation_head(), _geometry_encoder()
    model = Sam3Image(
        backbone=backbone, transformer=transformer, input_geometry_encoder=geometry, segmentation_head=seg_head,
        num_feature_levels=1, o2m_mask_predict=True, dot_prod_scoring=scoring, use_instance_query=False,
        multimask_output=True, inst_interactive_predictor=None, matcher=None,
    )
    return model.eval()


def _pos_enc(precompute=None):
    from sam3.model.position_encoding import PositionEmbeddingSine

    return PositionEmbeddingSine(num_pos_feats=D_MODEL, normalize=True, temperature=10000, precompute_resolution=precompute)


def _mha(batch_first=False, dropout=0.0):
    from sam3.model.model_misc import MultiheadAttentionWrapper

    return MultiheadAttentionWrapper(num_heads=8, dropout=dropout, embed_dim=D_MODEL, batch_first=batch_first)


def _backbone(bpe_path: str | Path, image_size: int):
    """ViT 64-d x 2 layers behind the real neck, and a 64-d x 1 layer text encoder."""
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    vit = ViT(
        img_size=image_size, pretrain_img_size=image_size, patch_size=PATCH, embed_dim=64, depth=2, num_heads=2,
        mlp_ratio=4.0, norm_layer="LayerNorm", drop_path_rate=0.0, qkv_bias=True, use_abs_pos=True,
        tile_abs_pos=True, global_att_blocks=(1,), rel_pos_blocks=(), use_rope=True, use_interp_rope=True,
        window_size=8, pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True, ln_post=False,
        return_interm_layers=False, bias_patch_embed=False,
    )
    neck = Sam3DualViTDetNeck(position_encoding=_pos_enc(image_size), d_model=D_MODEL,
                              scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=vit, add_sam2_neck=False)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=str(bpe_path)), d_model=D_MODEL, width=64, heads=2, layers=1)
    return SAM3VLBackbone(visual=neck, text=text, scalp=1)


def _transformer(image_size: int):
    """1 fusion encoder layer and 2 decoder layers, with the real builder's resolution and stride."""
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.model_misc import TransformerWrapper

    enc_layer = TransformerEncoderLayer(
        activation="relu", d_model=D_MODEL, dim_feedforward=FFN, dropout=0.0, pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False, pos_enc_at_cross_attn_queries=False, pre_norm=True,
        self_attention=_mha(True), cross_attention=_mha(True),
    )
    encoder = TransformerEncoderFusion(
        layer=enc_layer, num_layers=1, d_model=D_MODEL, num_feature_levels=1, frozen=False, use_act_checkpoint=False,
        add_pooled_text_to_img_feat=False, pool_text_with_mask=True,
    )
    dec_layer = TransformerDecoderLayer(
        activation="relu", d_model=D_MODEL, dim_feedforward=FFN, dropout=0.0, cross_attention=_mha(),
        n_heads=8, use_text_cross_attention=True,
    )
    decoder = TransformerDecoder(
        layer=dec_layer, num_layers=2, num_queries=200, return_intermediate=True, box_refine=True,
        num_o2m_queries=0, dac=True, boxRPB="log", d_model=D_MODEL, frozen=False, interaction_layer=None,
        dac_use_selfatt_ln=True, resolution=image_size, stride=PATCH, use_act_checkpoint=False,
        presence_token=True,
    )
    return TransformerWrapper(encoder=encoder, decoder=decoder, d_model=D_MODEL)


def _scoring():
    from sam3.model.model_misc import MLP, DotProductScoring
    from torch import nn

    return DotProductScoring(
        d_model=D_MODEL, d_proj=D_MODEL,
        prompt_mlp=MLP(input_dim=D_MODEL, hidden_dim=FFN, output_dim=D_MODEL, num_layers=2, dropout=0.0, residual=True,
                       out_norm=nn.LayerNorm(D_MODEL)),
    )


def _segmentation_head():
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead

    return UniversalSegmentationHead(
        hidden_dim=D_MODEL, upsampling_stages=3, aux_masks=False, presence_head=False, dot_product_scorer=None,
        act_ckpt=False, cross_attend_prompt=_mha(dropout=0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=D_MODEL),
    )


def _geometry_encoder():
    from sam3.model.encoder import TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder

    geo_layer = TransformerEncoderLayer(
        activation="relu", d_model=D_MODEL, dim_feedforward=FFN, dropout=0.0, pos_enc_at_attn=False, pre_norm=True,
        self_attention=_mha(False), pos_enc_at_cross_attn_queries=False, pos_enc_at_cross_attn_keys=True,
        cross_attention=_mha(False),
    )
    return SequenceGeometryEncoder(
        pos_enc=_pos_enc(), encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=D_MODEL,
        num_layers=1, layer=geo_layer, use_act_ckpt=False, add_cls=True, add_post_encode_proj=True,
        mask_encoder=None,
    )
