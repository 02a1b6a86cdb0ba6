"""The AMWC post-processor as it was before the grid-level rewrite (commit 526a02b), kept verbatim
as the reference the equivalence tests in test_post_processing.py compare against."""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, Instances

from detectron2_cops.modeling.post_processing import AMWCPostProcessor, _grid_size, _nearest_index
from detectron2_cops.solvers import solve_amwc_batch


class ReferenceAMWCPostProcessor(AMWCPostProcessor):
    # ------------------------------------------------------------------ main entry
    @torch.no_grad()
    def __call__(
        self,
        sem_seg_logits: torch.Tensor,
        cut_logits: Sequence[torch.Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        output_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        calibration: Optional[torch.nn.Module] = None,
    ) -> List[dict]:
        """Post-process a batch (see the class docstring).

        Args:
            sem_seg_logits: ``[B, K, h, w] float`` semantic logits on the stride grid of the
                padded input batch.
            cut_logits: one ``[B, 2, ceil(h / s), ceil(w / s)] float`` cut-logit map per edge
                distance (positive = the two pixels belong to different segments).
            image_sizes: per image ``(H, W)``, its size inside the padded input (input pixels;
                ``ImageList.image_sizes``).
            output_sizes: per image ``(height, width)`` of the outputs (default: ``image_sizes``).
            calibration: module mapping ``(sem_seg_logits, cut_logits)`` to ``(c_V, c_E)`` of the
                same shapes (``CostCalibration``), or None for ``c = -logits``.
        Returns:
            list of ``B`` dicts with ``panoptic_seg``, ``sem_seg`` and (if ``predict_instances``)
            ``instances``, on the device of ``sem_seg_logits``.
        Raises:
            ValueError: wrong ranks or shapes (``K`` != ``num_classes``, a map per distance of the
                wrong size, an image size larger than the grid covers, a wrong number of sizes),
                or non-finite costs.
        """
        if output_sizes is None:
            output_sizes = image_sizes
        self._check_inputs(sem_seg_logits, cut_logits, image_sizes, output_sizes)
        cut_logits = list(cut_logits)
        if calibration is not None:
            sem_costs, edge_costs = calibration(sem_seg_logits, cut_logits)
        else:
            sem_costs, edge_costs = -sem_seg_logits, [-m for m in cut_logits]

        stride = self.common_stride
        # One AMWC instance per image, on the image's part of the grid.
        instances, crops = [], []
        for b, (H, W) in enumerate(image_sizes):
            hc, wc = _grid_size((H, W), stride)
            graph = self.graph(hc, wc)
            node_costs = sem_costs[b, :, :hc, :wc].detach().permute(1, 2, 0).reshape(hc * wc, -1)
            maps = [
                m[b, :, : -(-hc // s), : -(-wc // s)].detach().float().cpu().numpy()
                for m, s in zip(edge_costs, self.edge_sampling_intervals)
            ]
            instances.append(
                (
                    node_costs.float().cpu().numpy(),
                    graph.edges,
                    graph.maps_to_edge_values(maps).astype(np.float32, copy=False),
                    self.partitionable,
                )
            )
            crops.append((hc, wc, graph))
        results = solve_amwc_batch(
            instances, local_search=self.local_search, num_threads=self.num_threads
        )

        upsampled = F.interpolate(
            sem_seg_logits, scale_factor=stride, mode="bilinear", align_corners=False
        )
        outputs = []
        for b, (result, (hc, wc, graph)) in enumerate(zip(results, crops)):
            H, W = int(image_sizes[b][0]), int(image_sizes[b][1])
            height, width = int(output_sizes[b][0]), int(output_sizes[b][1])
            logits_b = sem_seg_postprocess(upsampled[b], (H, W), height, width)
            cut_maps = [
                m[b, :, : -(-hc // s), : -(-wc // s)].detach().float().cpu().numpy()
                for m, s in zip(cut_logits, self.edge_sampling_intervals)
            ]
            outputs.append(
                self._image_outputs(result, hc, wc, graph, (H, W), (height, width), logits_b, cut_maps)
            )
        return outputs

    def _image_outputs(self, result, hc, wc, graph, image_size, output_size, logits, cut_maps):
        """Outputs of one image from its AMWC solution (see the class docstring)."""
        device = logits.device
        height, width = output_size
        node_labels = np.asarray(result.node_labels, dtype=np.int64)
        instance_ids = np.asarray(result.instance_ids, dtype=np.int64)
        num_clusters = int(instance_ids.max()) + 1 if instance_ids.size else 0

        # Class of every cluster; stuff clusters of one class merge into one segment.
        cluster_class = np.zeros(num_clusters, dtype=np.int64)
        cluster_class[instance_ids] = node_labels
        cluster_thing = self.partitionable[cluster_class]
        cluster_segment = np.empty(num_clusters, dtype=np.int64)
        segment_class: List[int] = []
        stuff_segment: Dict[int, int] = {}
        for k in range(num_clusters):  # clusters are numbered in order of their first node
            c = int(cluster_class[k])
            if cluster_thing[k]:
                cluster_segment[k] = len(segment_class)
                segment_class.append(c)
            else:
                if c not in stuff_segment:
                    stuff_segment[c] = len(segment_class)
                    segment_class.append(c)
                cluster_segment[k] = stuff_segment[c]
        num_segments = len(segment_class)
        seg_grid = cluster_segment[instance_ids].reshape(hc, wc) if num_clusters else np.zeros(
            (hc, wc), dtype=np.int64
        )

        # Nearest-neighbour resize of the grid segment map to the output size.
        seg_grid_t = torch.from_numpy(seg_grid).to(device)
        rows = _nearest_index(height, image_size[0], self.common_stride, hc, device)
        cols = _nearest_index(width, image_size[1], self.common_stride, wc, device)
        seg_out = seg_grid_t[rows][:, cols]

        # Area filter (output pixels), then ids 1.. in segment order.
        areas = torch.bincount(seg_out.reshape(-1), minlength=num_segments).cpu().numpy()
        classes = np.asarray(segment_class, dtype=np.int64)
        is_thing = self.partitionable[classes] if num_segments else np.zeros(0, dtype=bool)
        limits = np.where(is_thing, self.instance_area, self.stuff_area)
        keep = (areas > 0) & (areas >= limits)
        new_ids = np.zeros(num_segments, dtype=np.int64)
        new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
        panoptic = torch.from_numpy(new_ids).to(device)[seg_out].to(torch.int32)
        segments_info = [
            {
                "id": int(new_ids[k]),
                "category_id": int(classes[k]),
                "isthing": bool(is_thing[k]),
                "area": int(areas[k]),
            }
            for k in np.flatnonzero(keep).tolist()
        ]
        out = {
            "panoptic_seg": (panoptic, segments_info),
            "sem_seg": F.softmax(logits, dim=0),
        }
        if self.predict_instances:
            out["instances"] = self._instances(
                panoptic, segments_info, new_ids, seg_grid, graph, cut_maps, logits, (height, width)
            )
        return out

    def _instances(self, panoptic, segments_info, new_ids, seg_grid, graph, cut_maps, logits, size):
        """``Instances`` of the thing segments, with the ``MaskScore`` of the class docstring."""
        device = panoptic.device
        things = [s for s in segments_info if s["isthing"]]
        ids = torch.tensor([s["id"] for s in things], dtype=torch.int32, device=device)
        classes = torch.tensor([s["category_id"] for s in things], dtype=torch.int64, device=device)
        masks = panoptic[None] == ids[:, None, None]  # [M, height, width] bool

        # Semantic term: mean logit of the segment's class over its output pixels.
        if len(things):
            class_map = torch.zeros(len(new_ids) + 1, dtype=torch.int64, device=device)
            class_map[ids.long()] = classes
            pix_class = class_map[panoptic.long()]
            pix_logit = logits.gather(0, pix_class[None]).squeeze(0)
            sums = torch.bincount(
                panoptic.reshape(-1).long(), weights=pix_logit.reshape(-1).double(),
                minlength=int(ids.max()) + 1,
            )
            counts = torch.bincount(panoptic.reshape(-1).long(), minlength=int(ids.max()) + 1)
            sem_score = (sums[ids.long()] / counts[ids.long()].clamp(min=1)).float()
        else:
            sem_score = torch.zeros(0, dtype=torch.float32, device=device)

        # Edge term on the grid: mean cut logit on edges leaving - on edges inside the segment.
        num = len(new_ids)
        edge_score = np.zeros(num, dtype=np.float64)
        if graph.num_edges and num:
            values = graph.maps_to_edge_values(cut_maps).astype(np.float64)
            flat = seg_grid.reshape(-1)
            su, sv = flat[graph.edges[:, 0]], flat[graph.edges[:, 1]]
            inside = su == sv
            in_sum = np.bincount(su[inside], weights=values[inside], minlength=num)
            in_cnt = np.bincount(su[inside], minlength=num)
            cross = ~inside
            ends = np.concatenate([su[cross], sv[cross]])
            vals = np.concatenate([values[cross], values[cross]])
            out_sum = np.bincount(ends, weights=vals, minlength=num)
            out_cnt = np.bincount(ends, minlength=num)
            edge_score = np.where(out_cnt > 0, out_sum / np.maximum(out_cnt, 1), 0.0) - np.where(
                in_cnt > 0, in_sum / np.maximum(in_cnt, 1), 0.0
            )
        segment_of_id = np.zeros(int(new_ids.max()) + 1 if num else 1, dtype=np.int64)
        segment_of_id[new_ids[new_ids > 0]] = np.flatnonzero(new_ids > 0)
        thing_segments = segment_of_id[[s["id"] for s in things]] if things else np.zeros(0, np.int64)
        scores = sem_score + torch.as_tensor(
            edge_score[thing_segments], dtype=torch.float32, device=device
        )

        instances = Instances(size)
        instances.pred_masks = masks
        instances.pred_classes = classes
        instances.pred_boxes = Boxes(BitMasks(masks).get_bounding_boxes().tensor.to(device))
        instances.scores = scores
        return instances
