// Part of the job server this project assembles (data_ingestion/flink_job_server_pom.xml).
package org.apache.beam.runners.fnexecution.control;

import java.util.Collections;
import java.util.HashMap;
import java.util.Map;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.DelayedBundleApplication;
import org.apache.beam.model.fnexecution.v1.BeamFnApi.ProcessBundleResponse;
import org.apache.beam.runners.core.StateInternals;
import org.apache.beam.runners.core.StateInternalsFactory;
import org.apache.beam.runners.core.StateNamespace;
import org.apache.beam.runners.core.StateNamespaces;
import org.apache.beam.runners.core.StateTags;
import org.apache.beam.runners.core.TimerInternals;
import org.apache.beam.runners.core.TimerInternalsFactory;
import org.apache.beam.sdk.coders.Coder;
import org.apache.beam.sdk.coders.MapCoder;
import org.apache.beam.sdk.coders.VarIntCoder;
import org.apache.beam.sdk.coders.VarLongCoder;
import org.apache.beam.sdk.state.TimeDomain;
import org.apache.beam.sdk.state.ValueState;
import org.apache.beam.sdk.transforms.windowing.BoundedWindow;
import org.apache.beam.sdk.util.CoderUtils;
import org.apache.beam.sdk.util.WindowedValue;
import org.joda.time.Duration;
import org.joda.time.Instant;

/**
 * Takes the place of Beam 2.62's class of this name in the job server this project assembles
 * (data_ingestion/flink_job_server_pom.xml), to keep a self-checkpointing splittable DoFn's
 * checkpoint from growing without end (apache/beam#27648).
 *
 * <p>Beam 2.62 holds every residual in keyed state under a tag of its own, {@code
 * sdf_checkpoint:<n>:<i>} with {@code n} counting up forever, and the Flink operator reads it
 * when the residual's timer fires but never clears it. Each tag is a new Flink state: its
 * registration and its value stay in every later checkpoint (measured: 14-21 KB a checkpoint for
 * one MQTT source, 38 MB an hour). Beam fixed this after 2.62 in the operator (#39191), which
 * this project cannot rebuild from Maven Central alone.
 *
 * <p>This handler reuses tags instead, so the number of Flink states and of held values is
 * bounded. The operator still reads a residual by its timer id (= its tag), unchanged; the
 * residual's timer has then fired, and its tag may hold the next one. Since the operator does
 * not tell this handler when it has read a residual, a tag is reused only when its timer is
 * certain to have fired: {@link #REUSE_AFTER} (a minute) past its resume time, and past the
 * start of this handler (a restore brings back residuals whose timers fire only once the job
 * runs again). Each key keeps a map "slot -> resume time" in state of one more fixed name, so a
 * restore brings the map back with the residuals. A source read as one restriction per key
 * (this project's) thus cycles over a few dozen slots; several restrictions of one key get
 * slots of their own.
 *
 * <p>Two more differences: the requested resume delay keeps its fraction of a second (2.62
 * dropped it, so a source asking to be resumed in 0.5 s was resumed at once), and so does the
 * watermark hold.
 */
@SuppressWarnings({"rawtypes", "nullness"})
public class BundleCheckpointHandlers {

  /**
   * Holds each {@link DelayedBundleApplication} in a reused value state and resumes it with a
   * processing-time timer of the same name.
   */
  public static class StateAndTimerBundleCheckpointHandler<T> implements BundleCheckpointHandler {

    public static final String SDF_PREFIX = "sdf_checkpoint";

    /**
     * How long past its resume time a residual's timer is certain to have fired: Flink fires a
     * due processing-time timer within milliseconds, unless the task thread is stuck. The JVM
     * property {@code data_ingestion.sdf_residual_reuse_seconds} sets it (tests use seconds).
     */
    static final Duration REUSE_AFTER =
        Duration.standardSeconds(Long.getLong("data_ingestion.sdf_residual_reuse_seconds", 60));

    private static final String SLOTS = "sdf_residual_slots";
    private static final Coder<Map<Integer, Long>> SLOTS_CODER =
        MapCoder.of(VarIntCoder.of(), VarLongCoder.of());

    private final TimerInternalsFactory<T> timerInternalsFactory;
    private final StateInternalsFactory<T> stateInternalsFactory;
    private final Coder<WindowedValue<T>> residualCoder;
    private final Coder windowCoder;
    private final Instant startedAt = Instant.now();

    public StateAndTimerBundleCheckpointHandler(
        TimerInternalsFactory<T> timerInternalsFactory,
        StateInternalsFactory<T> stateInternalsFactory,
        Coder<WindowedValue<T>> residualCoder,
        Coder windowCoder) {
      this.timerInternalsFactory = timerInternalsFactory;
      this.stateInternalsFactory = stateInternalsFactory;
      this.residualCoder = residualCoder;
      this.windowCoder = windowCoder;
    }

    /** Whether {@code timerId} resumes a residual (the operator reads its state by this id). */
    public static boolean isSdfTimer(String timerId) {
      return timerId.startsWith(SDF_PREFIX);
    }

    @Override
    public void onCheckpoint(ProcessBundleResponse response) {
      for (DelayedBundleApplication residual : response.getResidualRootsList()) {
        if (residual.hasApplication()) {
          hold(residual);
        }
      }
    }

    private void hold(DelayedBundleApplication residual) {
      WindowedValue<T> value;
      try {
        value =
            CoderUtils.decodeFromByteArray(
                residualCoder, residual.getApplication().getElement().toByteArray());
      } catch (Exception e) {
        throw new RuntimeException("Failed to decode a residual", e);
      }
      TimerInternals timers = timerInternalsFactory.timerInternalsForKey(value.getValue());
      StateInternals states = stateInternalsFactory.stateInternalsForKey(value.getValue());
      Instant now = Instant.now();
      Instant resumeAt = now.plus(Duration.millis(millis(residual.getRequestedTimeDelay())));
      Instant hold = watermarkHold(residual);
      for (BoundedWindow window : value.getWindows()) {
        StateNamespace namespace = StateNamespaces.window(windowCoder, window);
        String tag = SDF_PREFIX + ":" + takeSlot(states, namespace, now, resumeAt);
        timers.setTimer(namespace, tag, "", resumeAt, hold, TimeDomain.PROCESSING_TIME);
        states
            .state(namespace, StateTags.value(tag, residualCoder))
            .write(
                WindowedValue.of(
                    value.getValue(),
                    value.getTimestamp(),
                    Collections.singletonList(window),
                    value.getPane()));
      }
    }

    /** The lowest slot of this key and window whose residual has certainly been resumed. */
    private int takeSlot(StateInternals states, StateNamespace namespace, Instant now, Instant at) {
      ValueState<Map<Integer, Long>> state =
          states.state(namespace, StateTags.value(SLOTS, SLOTS_CODER));
      Map<Integer, Long> held = state.read();
      Map<Integer, Long> slots = held == null ? new HashMap<>() : new HashMap<>(held);
      int slot = 0;
      while (slots.containsKey(slot) && !resumed(slots.get(slot), now)) {
        slot++;
      }
      slots.put(slot, at.getMillis());
      state.write(slots);
      return slot;
    }

    private boolean resumed(long resumeAtMillis, Instant now) {
      Instant due = new Instant(Math.max(resumeAtMillis, startedAt.getMillis()));
      return now.isAfter(due.plus(REUSE_AFTER));
    }

    private static Instant watermarkHold(DelayedBundleApplication residual) {
      Map<String, org.apache.beam.vendor.grpc.v1p60p1.com.google.protobuf.Timestamp> marks =
          residual.getApplication().getOutputWatermarksMap();
      if (marks.isEmpty()) {
        return BoundedWindow.TIMESTAMP_MIN_VALUE;
      }
      long lowest = BoundedWindow.TIMESTAMP_MAX_VALUE.getMillis();
      for (org.apache.beam.vendor.grpc.v1p60p1.com.google.protobuf.Timestamp mark : marks.values()) {
        lowest = Math.min(lowest, mark.getSeconds() * 1000 + mark.getNanos() / 1_000_000);
      }
      return new Instant(lowest);
    }

    private static long millis(org.apache.beam.vendor.grpc.v1p60p1.com.google.protobuf.Duration d) {
      return d.getSeconds() * 1000 + d.getNanos() / 1_000_000;
    }
  }
}
