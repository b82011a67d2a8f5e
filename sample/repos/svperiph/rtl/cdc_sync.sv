// cdc_sync: multi-flop synchronizer for a level signal crossing into clk.
// Each bit of d passes through STAGES flip-flops clocked by clk (2 by
// default) to bring the probability of metastability at q down to a safe
// level. The flops are marked ASYNC_REG so that place-and-route keeps them
// close together, and the path into the first stage should be declared a
// false path (or max-delay) in the timing constraints. Only use for signals
// that change at most once every few destination cycles, or for gray-coded
// buses.
module cdc_sync #(
  parameter int W = 1,
  parameter int STAGES = 2
) (
  input  logic         clk,
  input  logic         rst_n,
  input  logic [W-1:0] d,
  output logic [W-1:0] q
);
  (* ASYNC_REG = "TRUE" *) logic [W-1:0] sync_q [STAGES];

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n) begin
      for (int i = 0; i < STAGES; i++) sync_q[i] <= '0;
    end else begin
      sync_q[0] <= d;
      for (int i = 1; i < STAGES; i++) sync_q[i] <= sync_q[i-1];
    end
  end

  assign q = sync_q[STAGES-1];
endmodule
