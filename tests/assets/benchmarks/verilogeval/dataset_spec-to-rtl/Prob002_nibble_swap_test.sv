`timescale 1 ps/1 ps
module tb();
  reg [7:0] in;
  wire [7:0] out_ref, out_dut;
  integer i, mismatches = 0;
  RefModule r(.in(in), .out(out_ref));
  TopModule d(.in(in), .out(out_dut));
  initial begin
    for (i = 0; i < 256; i = i + 1) begin
      in = i[7:0]; #1;
      if (out_ref !== out_dut) mismatches = mismatches + 1;
    end
    $display("Mismatches: %0d in 256 samples", mismatches);
    $finish;
  end
endmodule
