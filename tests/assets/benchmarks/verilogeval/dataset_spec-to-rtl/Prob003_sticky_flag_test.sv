`timescale 1 ps/1 ps
module tb();
  reg clk = 0, clear = 1, event_in = 0;
  wire seen_ref, seen_dut;
  integer i, mismatches = 0;
  RefModule r(.clk(clk), .clear(clear), .event_in(event_in), .seen(seen_ref));
  TopModule d(.clk(clk), .clear(clear), .event_in(event_in), .seen(seen_dut));
  always #5 clk = ~clk;
  initial begin
    for (i = 0; i < 40; i = i + 1) begin
      @(negedge clk);
      clear = (i % 13 == 0);
      event_in = (i % 7 == 3);
      if (seen_ref !== seen_dut) mismatches = mismatches + 1;
    end
    $display("Mismatches: %0d in 40 samples", mismatches);
    $finish;
  end
endmodule
