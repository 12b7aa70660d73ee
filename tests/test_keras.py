"""The Keras 3 callback, with real training of small models (KERAS_BACKEND=torch)."""

from __future__ import annotations

import hashlib
import os

import keras
import numpy as np
import pytest

import trainprov as tp
from conftest import run_python
from trainprov.keras import ProvenanceCallback

keras.utils.set_random_seed(0)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(192, 6)).astype("float32")
Y = (X @ RNG.normal(size=6) > 0).astype("float32")


def small_model(lr=0.01, optimizer=None):
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="relu", name="hidden"),
        keras.layers.Dropout(0.2, name="drop"),
        keras.layers.Dense(1, activation="sigmoid", name="out"),
    ])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(lr), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def fit(store, callbacks=(), epochs=4, cb=None, model=None, **kwargs):
    cb = cb or ProvenanceCallback(store)
    model = model or small_model()
    history = model.fit(X, Y, epochs=epochs, batch_size=32, verbose=0, callbacks=[cb, *callbacks], **kwargs)
    return cb, model, history


def epochs_of(store):
    return tp.query_df("SELECT * FROM epoch_metrics ORDER BY task_id, epoch", store=store)


def lr_changes(store):
    return tp.query(
        "SELECT epoch, step, old_value, new_value, cause FROM adaptations WHERE kind = 'learning_rate' ORDER BY epoch, step",
        store=store,
    )


def test_epoch_values_equal_keras_history(store):
    cb, model, history = fit(store, validation_split=0.25, epochs=5)
    cb.end()
    rows = epochs_of(store)
    assert list(rows["epoch"]) == [1, 2, 3, 4, 5]
    for key, values in history.history.items():
        assert list(rows[key]) == values, key  # exactly: no rounding on the way
    assert (rows["learning_rate"] == np.float32(0.01)).all()
    assert (rows["epoch_time_s"] > 0).all()
    assert tp.query("SELECT status FROM runs", store=store) == [{"status": "finished"}]


def test_hyperparameters_architecture_and_user_values(store):
    class Config:
        width, activation_name = 8, "relu"

    cb = ProvenanceCallback(store, hyperparameters={"seed": 7, "augment": False, "notes": "baseline"},
                            hyperparameters_from=(Config, ["width", "activation_name"]))
    model = small_model(optimizer=keras.optimizers.Adam(0.003, beta_1=0.8))
    fit(store, cb=cb, model=model, epochs=2)
    cb.end()
    hp = tp.query("SELECT * FROM hyperparameters", store=store)[0]
    assert hp["optimizer"] == "Adam" and hp["learning_rate"] == pytest.approx(0.003)
    assert '"beta_1": 0.8' in hp["optimizer_config"] and hp["loss"] == "binary_crossentropy"
    assert hp["batch_size"] == 32 and hp["epochs"] == 2 and hp["steps_per_epoch"] == 6 and hp["n_layers"] == 3
    assert hp["trainable_params"] == model.count_params() == 6 * 8 + 8 + 8 + 1 and hp["non_trainable_params"] == 0
    assert (hp["seed"], hp["augment"], hp["notes"], hp["width"], hp["activation_name"]) == (7, False, "baseline", 8, "relu")
    layers = tp.query("SELECT name, class_name, output_shape, params, activation, units, dropout_rate FROM layers ORDER BY layer_index", store=store)
    assert layers == [
        {"name": "hidden", "class_name": "Dense", "output_shape": "(None, 8)", "params": 56, "activation": "relu", "units": 8, "dropout_rate": None},
        {"name": "drop", "class_name": "Dropout", "output_shape": "(None, 8)", "params": 0, "activation": None, "units": None, "dropout_rate": 0.2},
        {"name": "out", "class_name": "Dense", "output_shape": "(None, 1)", "params": 9, "activation": "sigmoid", "units": 1, "dropout_rate": None},
    ]


def test_include_keeps_only_the_chosen_hyperparameters(store):
    cb, _, _ = fit(store, cb=ProvenanceCallback(store, include=["optimizer", "learning_rate"]), epochs=1)
    cb.end()
    hp = tp.query("SELECT optimizer, learning_rate, batch_size, loss FROM hyperparameters", store=store)[0]
    assert hp["optimizer"] == "SGD" and hp["batch_size"] is None and hp["loss"] is None


def test_a_constant_learning_rate_gives_no_adaptation(store):
    cb, _, _ = fit(store, epochs=5)
    cb.end()
    assert lr_changes(store) == []


def test_learning_rate_scheduler_changes_are_recorded_once_each(store):
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (2 ** (epoch // 2)))
    # placed after our callback: Keras calls it after us, and the change is still caught
    cb, _, history = fit(store, callbacks=[schedule], epochs=6)
    cb.end()
    changes = lr_changes(store)
    expected = [0.1, 0.05, 0.025]
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    assert changes == [
        {"epoch": 1, "step": None, "old_value": f32(0.01), "new_value": f32(0.1), "cause": "LearningRateScheduler"},
        {"epoch": 3, "step": None, "old_value": f32(0.1), "new_value": f32(0.05), "cause": "LearningRateScheduler"},
        {"epoch": 5, "step": None, "old_value": f32(0.05), "new_value": f32(0.025), "cause": "LearningRateScheduler"},
    ]
    assert list(epochs_of(store)["learning_rate"]) == history.history["learning_rate"]
    assert sorted({round(v, 6) for v in history.history["learning_rate"]}, reverse=True) == expected


def test_reduce_lr_on_plateau_is_recorded_with_its_monitor(store):
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100.0)
    cb = ProvenanceCallback(store)
    model = small_model(lr=0.02)
    # ours placed last this time
    history = model.fit(X, Y, epochs=5, batch_size=32, verbose=0, callbacks=[plateau, cb])
    cb.end()
    changes = tp.query("SELECT epoch, old_value, new_value, cause, monitor, monitor_value FROM adaptations", store=store)
    lrs = history.history["learning_rate"]  # the rate each epoch trained with
    rates = lrs + [float(np.float32(model.optimizer.learning_rate))]  # and the rate left for a next epoch
    expected = [(e + 1, rates[e - 1], rates[e]) for e in range(1, len(rates)) if rates[e] != rates[e - 1]]
    assert [(c["epoch"], c["old_value"], c["new_value"]) for c in changes] == expected and expected
    assert {c["cause"] for c in changes} == {"ReduceLROnPlateau"} and {c["monitor"] for c in changes} == {"loss"}
    losses = history.history["loss"]
    assert [c["monitor_value"] for c in changes] == [losses[e - 2] for e, _, _ in expected]
    assert list(epochs_of(store)["learning_rate"]) == lrs


def test_piecewise_constant_schedule_changes_are_found_at_their_step(store):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([8, 15], [0.1, 0.05, 0.01])
    cb, _, _ = fit(store, model=small_model(optimizer=keras.optimizers.SGD(schedule)), epochs=4)
    cb.end()
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    # 6 steps per epoch; iteration 9 (epoch 2, step 4) is the first above boundary 8,
    # iteration 16 (epoch 3, step 5) the first above 15
    assert lr_changes(store) == [
        {"epoch": 2, "step": 4, "old_value": f32(0.1), "new_value": f32(0.05), "cause": "PiecewiseConstantDecay schedule"},
        {"epoch": 3, "step": 5, "old_value": f32(0.05), "new_value": f32(0.01), "cause": "PiecewiseConstantDecay schedule"},
    ]
    assert '"class": "PiecewiseConstantDecay"' in tp.query("SELECT lr_schedule FROM hyperparameters", store=store)[0]["lr_schedule"]


def test_a_continuous_schedule_is_a_hyperparameter_not_a_stream_of_adaptations(store):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=6, decay_rate=0.5)
    cb, _, _ = fit(store, model=small_model(optimizer=keras.optimizers.SGD(schedule)), epochs=3)
    cb.end()
    assert lr_changes(store) == []
    rates = list(epochs_of(store)["learning_rate"])
    assert rates == sorted(rates, reverse=True) and rates[0] < 0.1
    assert rates[1] == pytest.approx(0.1 * 0.5 ** (11 / 6), rel=1e-5)  # the rate of the epoch's last step
    assert '"decay_rate": 0.5' in tp.query("SELECT lr_schedule FROM hyperparameters", store=store)[0]["lr_schedule"]


def test_a_learning_rate_set_by_hand_is_recorded(store):
    class Manual(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.optimizer.learning_rate = 0.001

    cb = ProvenanceCallback(store)
    model = small_model()
    fit(store, callbacks=[Manual()], cb=cb, model=model, epochs=3)
    model.optimizer.learning_rate = 0.0005  # between two fits, outside any callback
    fit(store, cb=cb, model=model, epochs=1)
    cb.end()
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    assert [(c["epoch"], c["old_value"], c["new_value"], c["cause"]) for c in lr_changes(store)] == [
        (3, f32(0.01), f32(0.001), "Manual"),
        (4, f32(0.001), f32(0.0005), "manual"),
    ]


def test_early_stopping_is_recorded_and_the_training_task_ends(store):
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=100.0)
    cb, _, history = fit(store, callbacks=[stop], epochs=20)
    cb.end()
    ran = len(history.history["loss"])
    assert ran < 20 and len(epochs_of(store)) == ran  # the last epoch is there
    row = tp.query("SELECT * FROM adaptations WHERE kind = 'early_stopping'", store=store)[0]
    assert row["epoch"] == stop.stopped_epoch + 1 == ran and row["best_epoch"] == stop.best_epoch + 1
    assert row["monitor"] == "loss" and row["monitor_value"] == history.history["loss"][-1]
    assert row["old_value"] == 20 and row["new_value"] == ran
    assert tp.query("SELECT status FROM tasks WHERE transformation = 'train'", store=store) == [{"status": "finished"}]


def test_evaluate_results_equal_what_evaluate_returned(store):
    cb, model, _ = fit(store, epochs=2, validation_split=0.2)
    returned = model.evaluate(X, Y, batch_size=64, callbacks=[cb], return_dict=True, verbose=0)
    cb.end()
    rows = tp.query("SELECT loss, accuracy, evaluation_time_s FROM test_results", store=store)
    assert rows == [{"loss": returned["loss"], "accuracy": returned["accuracy"], "evaluation_time_s": rows[0]["evaluation_time_s"]}]
    tasks = tp.query("SELECT t.task_id, d.depends_on FROM tasks t JOIN task_dependencies d ON d.task_id = t.task_id WHERE t.transformation = 'evaluate'", store=store)
    train = tp.query("SELECT task_id FROM tasks WHERE transformation = 'train'", store=store)[0]["task_id"]
    assert [t["depends_on"] for t in tasks] == [train]


def test_model_checkpoint_files_carry_their_sha256_and_chain(store, tmp_path):
    pattern = str(tmp_path / "model-{epoch:02d}.weights.h5")
    checkpoint = keras.callbacks.ModelCheckpoint(pattern, save_weights_only=True)
    cb, _, _ = fit(store, callbacks=[checkpoint], epochs=3)  # ours runs before the checkpoint's save
    cb.end()
    files = tp.query("SELECT c.epoch, f.file_id, f.path, f.sha256, f.size_bytes FROM checkpoints c "
                     "JOIN files f ON f.task_id = c.task_id AND f.element_seq = c.element_seq ORDER BY c.epoch", store=store)
    assert [f["epoch"] for f in files] == [1, 2, 3]
    for f in files:
        assert f["path"] == pattern.format(epoch=f["epoch"])
        assert f["sha256"] == hashlib.sha256(open(f["path"], "rb").read()).hexdigest()
    chain = tp.query("SELECT file_id, derived_from FROM file_derivations ORDER BY file_id", store=store)
    assert [(c["file_id"], c["derived_from"]) for c in chain] == [(files[1]["file_id"], files[0]["file_id"]), (files[2]["file_id"], files[1]["file_id"])]


def test_save_best_only_records_just_the_files_written(store, tmp_path):
    pattern = str(tmp_path / "best-{epoch:02d}.keras")
    checkpoint = keras.callbacks.ModelCheckpoint(pattern, monitor="loss", save_best_only=True, mode="max")
    cb, _, history = fit(store, callbacks=[checkpoint], epochs=4)
    cb.end()
    written = sorted(int(p[5:7]) for p in os.listdir(tmp_path) if p.startswith("best-"))
    assert [r["epoch"] for r in tp.query("SELECT epoch FROM checkpoints ORDER BY epoch", store=store)] == written


def test_per_step_capture_every_step_and_every_n_steps(tmp_path):
    every = str(tmp_path / "every.db")
    cb, _, history = fit(every, cb=ProvenanceCallback(every, steps=True), epochs=3)
    cb.end()
    steps = tp.query_df("SELECT epoch, step, global_step, loss, accuracy FROM step_metrics ORDER BY global_step", store=every)
    assert len(steps) == 3 * 6 and list(steps["global_step"]) == list(range(1, 19))
    assert list(steps.groupby("epoch")["step"].max()) == [6, 6, 6]
    # the last step's running average is the epoch's value
    assert list(steps[steps["step"] == 6]["loss"]) == history.history["loss"]
    sparse = str(tmp_path / "sparse.db")
    cb, _, _ = fit(sparse, cb=ProvenanceCallback(sparse, steps=4), epochs=2)
    cb.end()
    assert tp.query("SELECT step FROM step_metrics ORDER BY global_step", store=sparse) == [{"step": 4}, {"step": 4}]
    off = str(tmp_path / "off.db")
    cb, _, _ = fit(off, epochs=2)
    cb.end()
    assert tp.query("SELECT count(*) AS n FROM step_metrics", store=off) == [{"n": 0}]


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return 6

    def __getitem__(self, index):
        return X[index * 32:(index + 1) * 32], Y[index * 32:(index + 1) * 32]


def generator():
    while True:
        for i in range(6):
            yield X[i * 32:(i + 1) * 32], Y[i * 32:(i + 1) * 32]


@pytest.mark.parametrize("kind", ["pydataset", "generator", "torch_dataloader"])
def test_other_kinds_of_input(store, kind):
    cb, model = ProvenanceCallback(store), small_model()
    if kind == "pydataset":
        history = model.fit(Batches(), epochs=2, verbose=0, callbacks=[cb])
    elif kind == "generator":
        history = model.fit(generator(), steps_per_epoch=6, epochs=2, verbose=0, callbacks=[cb])
    else:
        import torch

        data = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))
        history = model.fit(torch.utils.data.DataLoader(data, batch_size=32), epochs=2, verbose=0, callbacks=[cb])
    cb.end()
    assert list(epochs_of(store)["loss"]) == history.history["loss"]
    assert tp.query("SELECT batch_size FROM hyperparameters", store=store) == [{"batch_size": 32}]


def test_several_fits_continue_one_run_or_start_new_ones(tmp_path):
    one = str(tmp_path / "one.db")
    cb, model = ProvenanceCallback(one), small_model()
    fit(one, cb=cb, model=model, epochs=2)
    fit(one, cb=cb, model=model, epochs=4, initial_epoch=2)
    cb.end()
    assert tp.query("SELECT count(*) AS n FROM runs", store=one) == [{"n": 1}]
    assert [r["epoch"] for r in tp.query("SELECT epoch FROM epoch_metrics ORDER BY recorded_at", store=one)] == [1, 2, 3, 4]
    assert tp.query("SELECT iteration FROM tasks WHERE transformation = 'train' ORDER BY iteration", store=one) == [{"iteration": 1}, {"iteration": 2}]
    many = str(tmp_path / "many.db")
    cb = ProvenanceCallback(many, new_run_per_fit=True)
    fit(many, cb=cb, model=model, epochs=1)
    fit(many, cb=cb, model=model, epochs=1)
    assert tp.query("SELECT status, count(*) AS n FROM runs GROUP BY status", store=many) == [{"status": "finished", "n": 2}]


def test_an_exception_inside_fit_leaves_a_failed_run_with_its_epochs(store):
    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("loss exploded")

    with pytest.raises(RuntimeError):
        with ProvenanceCallback(store) as cb:
            fit(store, callbacks=[Boom()], cb=cb, epochs=10)
    assert tp.query("SELECT status, error FROM runs", store=store) == [{"status": "failed", "error": "RuntimeError: loss exploded"}]
    assert tp.query("SELECT status FROM tasks WHERE transformation = 'train'", store=store) == [{"status": "failed"}]
    assert len(epochs_of(store)) >= 2


def test_an_uncaught_exception_in_a_script_fails_the_run(store):
    code = """
    import os, sys
    os.environ["KERAS_BACKEND"] = "torch"
    import keras, numpy as np
    from trainprov.keras import ProvenanceCallback
    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise ValueError("nan loss")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((64, 3), "float32")
    model.fit(x, x[:, :1], epochs=5, verbose=0, callbacks=[ProvenanceCallback(sys.argv[1]), Boom()])
    """
    done = run_python(code, store, check=False)
    assert done.returncode == 1 and "ValueError: nan loss" in done.stderr
    assert tp.query("SELECT status, error FROM runs", store=store) == [{"status": "failed", "error": "ValueError: nan loss"}]
    assert [r["epoch"] for r in tp.query("SELECT epoch FROM epoch_metrics", store=store)] == [1, 2]


def test_a_script_that_trains_without_ending_the_run_is_finished(store):
    code = """
    import os, sys
    os.environ["KERAS_BACKEND"] = "torch"
    import keras, numpy as np
    from trainprov.keras import ProvenanceCallback
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((64, 3), "float32")
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[ProvenanceCallback(sys.argv[1])])
    """
    run_python(code, store)
    assert tp.query("SELECT status, error FROM runs", store=store) == [{"status": "finished", "error": None}]


def test_a_metric_that_is_not_a_number_is_kept_in_extra(store):
    class Note(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["phase"] = "warmup" if epoch == 0 else "main"

    cb = ProvenanceCallback(store)
    history = small_model().fit(X, Y, epochs=2, batch_size=32, verbose=0, callbacks=[Note(), cb])
    cb.end()
    rows = tp.query("SELECT loss, extra FROM epoch_metrics ORDER BY epoch", store=store)
    assert [r["extra"] for r in rows] == ['{"phase": "warmup"}', '{"phase": "main"}']
    assert [r["loss"] for r in rows] == history.history["loss"]


def test_a_learning_rate_set_when_training_begins_is_recorded(store):
    class Warmup(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model.optimizer.learning_rate = 0.05

    cb, _, _ = fit(store, callbacks=[Warmup()], epochs=2)
    cb.end()
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    assert [(c["epoch"], c["old_value"], c["new_value"], c["cause"]) for c in lr_changes(store)] == [(1, f32(0.01), f32(0.05), "Warmup")]


def test_evaluate_after_a_failed_fit_is_recorded_and_the_fit_is_failed(store):
    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("stop")

    cb, model = ProvenanceCallback(store), small_model()
    with pytest.raises(RuntimeError):
        model.fit(X, Y, epochs=3, verbose=0, validation_split=0.2, callbacks=[cb, Boom()])
    returned = model.evaluate(X, Y, verbose=0, callbacks=[cb], return_dict=True)
    cb.end()
    assert tp.query("SELECT loss FROM test_results", store=store) == [{"loss": returned["loss"]}]
    assert tp.query("SELECT status FROM tasks WHERE transformation = 'train'", store=store) == [{"status": "failed"}]


def test_a_hyperparameter_keeps_the_type_the_store_gave_it(store):
    for value in (0, 0.01):  # an int first, a float later: the later value is kept in `extra`
        cb = ProvenanceCallback(store, hyperparameters={"weight_decay": value, "dropout": value})
        fit(store, cb=cb, epochs=1)
        cb.end()
    rows = tp.query("SELECT weight_decay, extra FROM hyperparameters ORDER BY recorded_at", store=store)
    assert rows == [{"weight_decay": 0, "extra": None}, {"weight_decay": None, "extra": '{"dropout": 0.01, "weight_decay": 0.01}'}]
