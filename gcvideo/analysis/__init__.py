"""Analysis: parameter and FLOP counting (paper Table 10), built on fvcore."""
from gcvideo.analysis.flops import (PAPER_TABLE10, TEST_INPUT, TRAIN_INPUT, FlopReport, PaperRow, count_flops,
                                    count_flops_mmcv_style, count_params)

__all__ = ["count_flops", "count_params", "count_flops_mmcv_style", "FlopReport", "PaperRow", "PAPER_TABLE10",
           "TRAIN_INPUT", "TEST_INPUT"]
