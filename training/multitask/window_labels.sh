# Sourced by prepare.sh and eval_original.sh (DATA set): where the teachers' labels of the original
# audio live for the model's window. WINDOW_FRAMES unset: the recipe's window, in labels_orig;
# WINDOW_FRAMES=N: labels made for windows of N frames, in labels_orig_wN, and the --set that says so.
LABELS=$DATA/labels_orig WINDOW_SET=()
if [[ -n ${WINDOW_FRAMES:-} ]]; then
  LABELS=$DATA/labels_orig_w$WINDOW_FRAMES WINDOW_SET=(--set "frontend.window_frames=$WINDOW_FRAMES")
fi
