-- Time per epoch for each configuration.
SELECT h.optimizer, h.batch_size, h.learning_rate, h.trainable_params,
       count(DISTINCT m.run_id) AS runs, count(*) AS epochs,
       avg(m.epoch_time_s) AS mean_epoch_s, min(m.epoch_time_s) AS fastest_epoch_s,
       max(m.epoch_time_s) AS slowest_epoch_s
FROM hyperparameters h
JOIN epoch_metrics m ON m.task_id = h.task_id
GROUP BY h.optimizer, h.batch_size, h.learning_rate, h.trainable_params
ORDER BY mean_epoch_s
