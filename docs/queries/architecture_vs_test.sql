-- Architecture facts next to test results, one row per evaluation.
SELECT r.run_id, h.n_layers, h.trainable_params,
       (SELECT count(*) FROM layers l WHERE l.task_id = h.task_id AND l.filters IS NOT NULL) AS conv_layers,
       (SELECT count(*) FROM layers l WHERE l.task_id = h.task_id AND l.class_name = 'BatchNormalization') AS norm_layers,
       (SELECT max(l.dropout_rate) FROM layers l WHERE l.task_id = h.task_id) AS max_dropout,
       t.loss AS test_loss
FROM runs r
JOIN hyperparameters h ON h.run_id = r.run_id
JOIN test_results t ON t.run_id = r.run_id
WHERE t.loss IS NOT NULL AND h.n_layers IS NOT NULL
ORDER BY t.loss
