"""Analysis: parameter and FLOP counting (paper Table 10), built on fvcore."""
from gcvideo.analysis.flops import (PAPER_TABLE10, TEST_INPUT, TRAIN_INPUT, FlopReport, PaperRow, count_flops,
                                    count_flops_mmcv_style, count_params)

__all__ = ["count_flops", "count_params", "count_flops_mmcv_style", "FlopReport", "PaperRow", "PAPER_TABLE10",
           "TRAIN_INPUT", "TEST_INPUT"]

# Seeing what the models learn, and using them (docs/analysis.md).
from gcvideo.analysis.attention import (capture_context_inputs, context_input_hooks, gc_attention_maps,  # noqa: E402
                                        nl_attention_maps, visualize_attention, AttentionFigure)
from gcvideo.analysis.export import ExportOptions, export_model  # noqa: E402
from gcvideo.analysis.nonlocal_stats import (analyze_nonlocal, collect_nonlocal_stats,  # noqa: E402
                                             mean_pairwise_cosine_distance, mean_pairwise_jsd, nonlocal_block_stats)
from gcvideo.analysis.predict import predict_videos  # noqa: E402

__all__ += ["context_input_hooks", "capture_context_inputs", "gc_attention_maps", "nl_attention_maps",
            "visualize_attention", "mean_pairwise_cosine_distance", "mean_pairwise_jsd", "nonlocal_block_stats",
            "collect_nonlocal_stats", "analyze_nonlocal", "predict_videos", "export_model"]
__all__ += ["ExportOptions", "AttentionFigure"]
