"""PyTorch reference of ``m2s2l.ops.frame_errors`` (also its CPU path): the computations of
``m2s2l.models.scoring.score`` it replaces, in float32."""


def frame_errors_ref(app, target, mot, mot_target):
    """app, target (B, C, H, W); mot, mot_target (B, Cm, H, W) -> (app_map (B, 1, H, W), mot_map (B, 1, H, W),
    app_mse (B,)), all float32: the channel means of the squared differences, and the mean of the squared
    appearance difference over channels and pixels (= app_map's mean over pixels)."""
    app_map = (app.float() - target.float()).pow(2).mean(1, keepdim=True)
    mot_map = (mot.float() - mot_target.float()).pow(2).mean(1, keepdim=True)
    return app_map, mot_map, app_map.flatten(1).mean(1)
