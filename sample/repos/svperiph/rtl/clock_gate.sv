// clock_gate: integrated clock-gating cell for dynamic power reduction.
// gclk follows clk while en is high and stays low while en is low. en (or
// test_en, which forces the clock on during scan test) is captured by a
// latch that is transparent while clk is low, so gclk never glitches. With
// USE_TECH_ICG defined, the standard-cell ICG of the target library is
// instantiated instead of the behavioural latch-and-AND model.
module clock_gate (
  input  logic clk,
  input  logic en,
  input  logic test_en,
  output logic gclk
);
`ifdef USE_TECH_ICG
  sky130_fd_sc_hd__dlclkp_1 u_icg (
    .CLK (clk),
    .GATE(en | test_en),
    .GCLK(gclk)
  );
`else
  logic en_latched;

  always_latch begin
    if (!clk)
      en_latched = en | test_en;
  end

  assign gclk = clk & en_latched;
`endif
endmodule
